"""Text-to-speech with eSpeak NG, loaded through ctypes from the ``espeakng-loader`` package.

eSpeak NG keeps global state (one voice, one callback), so every call holds a module-level
lock. The library is initialised once, lazily, in synchronous mode: ``espeak_Synth`` returns
after the synth callback has received all samples.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from dataclasses import dataclass, field

import espeakng_loader
import numpy as np
import numpy.typing as npt

from lavia_live.errors import SpeechError

__all__ = ["ESPEAK_SAMPLE_RATE", "SpeechAudio", "TTSOptions", "synthesize"]

logger = logging.getLogger(__name__)

ESPEAK_SAMPLE_RATE = 22050
"""Sample rate eSpeak NG reports for its voices."""

# Constants from espeak-ng/speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_EE_OK = 0
_PARAM_RATE = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_MIN_WPM = 80
_MAX_WPM = 450

# int callback(short *wav, int numsamples, espeak_EVENT *events); 0 continues, 1 aborts.
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class SpeechAudio:
    """Synthesised speech: mono int16 PCM."""

    pcm: npt.NDArray[np.int16] = field(repr=False)
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return float(self.pcm.shape[0]) / float(self.sample_rate)


@dataclass(frozen=True)
class TTSOptions:
    """Voice and speaking rate; ``voice`` is an eSpeak NG voice name such as ``en-us``."""

    voice: str = "en-us"
    words_per_minute: int = 160

    def __post_init__(self) -> None:
        if not _MIN_WPM <= self.words_per_minute <= _MAX_WPM:
            raise ValueError(
                f"words_per_minute must be in [{_MIN_WPM}, {_MAX_WPM}], got {self.words_per_minute}"
            )
        if not self.voice.strip():
            raise ValueError("voice must not be empty")


class _ESpeak:
    """The loaded library plus the buffer its callback fills. Use only while holding _LOCK."""

    def __init__(self) -> None:
        library_path = espeakng_loader.get_library_path()
        try:
            data_path = espeakng_loader.get_data_path()
            self._lib = ctypes.CDLL(library_path)
        except (OSError, RuntimeError) as exc:
            raise SpeechError(f"cannot load eSpeak NG from {library_path}: {exc}") from exc
        self._declare_signatures()
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise SpeechError(f"espeak_Initialize failed (data path {data_path}): {rate}")
        self.sample_rate: int = int(rate)
        self._chunks: list[npt.NDArray[np.int16]] = []
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SynthCallback(self._on_samples)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._wpm: int | None = None
        logger.info("eSpeak NG initialised: %s, %d Hz", library_path, self.sample_rate)

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int

    def _on_samples(
        self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None
    ) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.int16))
        return 0

    def _configure(self, options: TTSOptions) -> None:
        if options.voice != self._voice:
            status = self._lib.espeak_SetVoiceByName(options.voice.encode())
            if status != _EE_OK:
                self._voice = None
                raise SpeechError(f"eSpeak NG has no voice named {options.voice!r}")
            self._voice = options.voice
            self._wpm = None
        if options.words_per_minute != self._wpm:
            status = self._lib.espeak_SetParameter(_PARAM_RATE, options.words_per_minute, 0)
            if status != _EE_OK:
                raise SpeechError(f"eSpeak NG rejected rate {options.words_per_minute}: {status}")
            self._wpm = options.words_per_minute

    def synthesize(self, text: str, options: TTSOptions) -> npt.NDArray[np.int16]:
        self._configure(options)
        encoded = text.encode("utf-8")
        buffer = ctypes.create_string_buffer(encoded)
        self._chunks = []
        try:
            status = self._lib.espeak_Synth(
                buffer, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status != _EE_OK:
                raise SpeechError(f"espeak_Synth failed with status {status}")
            if not self._chunks:
                return np.zeros(0, dtype=np.int16)
            return np.concatenate(self._chunks)
        finally:
            self._chunks = []


_LOCK = threading.Lock()


@functools.cache
def _get_engine() -> _ESpeak:
    """The process-wide engine, created on first use. The caller holds ``_LOCK``."""
    return _ESpeak()


def synthesize(text: str, options: TTSOptions | None = None) -> SpeechAudio:
    """Speak ``text`` into mono int16 PCM. Blocking; safe to call from several threads."""
    opts = options or TTSOptions()
    cleaned = text.replace("\x00", " ").strip()
    if not cleaned:
        return SpeechAudio(pcm=np.zeros(0, dtype=np.int16), sample_rate=ESPEAK_SAMPLE_RATE)
    with _LOCK:
        engine = _get_engine()
        pcm = engine.synthesize(cleaned, opts)
        sample_rate = engine.sample_rate
    logger.debug("synthesised %d chars into %.2f s", len(cleaned), pcm.shape[0] / sample_rate)
    return SpeechAudio(pcm=pcm, sample_rate=sample_rate)
