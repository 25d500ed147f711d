"""Speech synthesis behind one small interface, and the engines that ship with it.

A :class:`Synthesizer` turns one sentence into mono int16 PCM at its own sample rate. Calls
block (a C library, an HTTP request); the live server runs them in a worker thread, never on
the event loop. Shipped: :class:`ESpeakSynthesizer` (eSpeak NG, embedded, the default) and
:class:`~lavia_live.speech.openai_tts.OpenAISynthesizer` (OpenAI TTS). Another engine needs
only ``name``, ``voices``, ``default_voice``, ``synthesize`` and ``close``.
:func:`open_synthesizer` makes the one the settings name; :func:`resample` brings any of them
to the 48 kHz of a WebRTC audio track.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

from lavia_live.config.settings import SpeechSettings
from lavia_live.speech.tts import SpeechAudio, TTSOptions, synthesize

__all__ = [
    "ESPEAK_VOICES",
    "ESpeakSynthesizer",
    "Synthesizer",
    "open_synthesizer",
    "resample",
]

ESPEAK_VOICES: Mapping[str, str] = {
    "en-us": "English (US)",
    "en-us+f3": "English (US), higher",
    "en-us+m3": "English (US), lower",
    "en-gb-x-rp": "English (UK)",
    "en-gb-scotland": "English (Scotland)",
    "en-029": "English (Caribbean)",
}
"""eSpeak NG voices offered to clients: voice name -> label."""


class Synthesizer(Protocol):
    """Text to speech; every call blocks and may be made from any thread."""

    @property
    def name(self) -> str:
        """Engine name shown to clients, e.g. ``espeak`` or ``openai:tts-1``."""
        ...

    @property
    def voices(self) -> Mapping[str, str]:
        """Voices a client may choose: voice id -> label."""
        ...

    @property
    def default_voice(self) -> str: ...

    def synthesize(self, text: str, voice: str, rate_wpm: int) -> SpeechAudio:
        """One sentence as mono int16 PCM; :class:`~lavia_live.errors.SpeechError` on failure."""
        ...

    def close(self) -> None:
        """Free what the engine holds (connections); called once, at server shutdown."""
        ...


class ESpeakSynthesizer:
    """eSpeak NG from ``espeakng-loader`` (:func:`lavia_live.speech.tts.synthesize`)."""

    name = "espeak"

    def __init__(self, default_voice: str = "en-us") -> None:
        TTSOptions(voice=default_voice)  # validates
        self.default_voice = default_voice
        self.voices: Mapping[str, str] = (
            dict(ESPEAK_VOICES)
            if default_voice in ESPEAK_VOICES
            else {default_voice: default_voice, **ESPEAK_VOICES}
        )

    def synthesize(self, text: str, voice: str, rate_wpm: int) -> SpeechAudio:
        return synthesize(text, TTSOptions(voice=voice, words_per_minute=rate_wpm))

    def close(self) -> None:
        """eSpeak NG stays loaded for the process (it is global state in the library)."""


def open_synthesizer(settings: SpeechSettings) -> Synthesizer:
    """The engine ``settings.engine`` names; :class:`~lavia_live.errors.SpeechError` when it
    cannot be set up (for OpenAI: no API key)."""
    if settings.engine == "openai":
        from lavia_live.speech.openai_tts import OpenAISynthesizer, OpenAITTSOptions

        return OpenAISynthesizer(
            OpenAITTSOptions(
                model=settings.openai_model,
                voice=settings.openai_voice,
                base_url=settings.openai_base_url,
                api_key_env=settings.openai_api_key_env,
                timeout_s=settings.timeout_s,
            )
        )
    return ESpeakSynthesizer(settings.voice)


def resample(audio: SpeechAudio, rate: int = 48000) -> npt.NDArray[np.int16]:
    """Mono int16 PCM at ``rate`` (FFmpeg's resampler through PyAV). Blocking: run it in
    the same worker thread as the synthesis."""
    if audio.pcm.shape[0] == 0:
        return np.zeros(0, dtype=np.int16)
    if audio.sample_rate == rate:
        return audio.pcm
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio.pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = audio.sample_rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    if not out:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.asarray(f.to_ndarray(), dtype=np.int16).reshape(-1) for f in out])
