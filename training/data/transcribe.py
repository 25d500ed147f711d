"""Transcription stage of the dataset build: a video's narration as a timestamped Transcript.

Two backends. ``local`` runs faster-whisper (:func:`lavia_live.speech.asr.transcribe_file`,
the embedded ``tiny.en`` by default). ``openai`` decodes the first audio track to mono 16 kHz,
encodes it as 32 kbps MP3 and uploads it to ``/v1/audio/transcriptions`` (``whisper-1`` by
default, ``verbose_json`` with segment timestamps); audio over ``max_upload_bytes`` is split
into chunks on time boundaries (at the quietest moment near each boundary) and every chunk's
segment times are offset by the chunk's start. A failed upload (408/409/429/5xx, connection
error, timeout) is retried by the ``openai`` SDK (``max_retries``, honouring Retry-After).
Calls block; callers run them in a worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np
import numpy.typing as npt
import openai
from openai.types.audio import TranscriptionVerbose

from lavia_live.errors import SpeechError
from lavia_live.openai_compat import MissingAPIKey, api_key_from_env, describe_error
from lavia_live.speech.asr import (
    SAMPLE_RATE,
    Segment,
    Transcript,
    TranscriptionOptions,
    decode_audio_file,
    transcribe_file,
)

__all__ = [
    "TranscribeOptions",
    "TranscriptionError",
    "TranscriptionResult",
    "options_fingerprint",
    "transcribe_video",
    "transcript_from_json",
    "transcript_to_json",
]

log = logging.getLogger(__name__)

UPLOAD_BITRATE = 32_000  # bits/s of the MP3 sent to the API (mono 16 kHz speech)
_FINGERPRINT_VERSION = 1  # bump when the output of either backend changes for the same options
_MIN_CHUNK_S = 1.0
_QUIET_WINDOW_S = 0.1  # granularity of the quietest-moment search near a chunk boundary


class TranscriptionError(SpeechError):
    """Transcription cannot run (missing API key, bad options) or the API kept failing."""


@dataclass(frozen=True)
class TranscribeOptions:
    backend: Literal["local", "openai"] = "local"
    local: TranscriptionOptions = field(default_factory=TranscriptionOptions)
    openai_model: str = "whisper-1"
    openai_base_url: str | None = None  # None -> OpenAI's default
    api_key_env: str = "OPENAI_API_KEY"  # "" -> no key needed (a local server)
    timeout_s: float = 300.0  # per upload
    # Retries of a chunk's upload by the openai SDK: 408/409/429/5xx, timeouts and connection
    # errors, with jittered exponential backoff or the wait Retry-After asks for.
    max_retries: int = 3
    usd_per_minute: float = 0.006  # whisper-1 list price, for cost accounting
    max_upload_bytes: int = 25 * 1024 * 1024  # OpenAI's upload limit, per file

    def __post_init__(self) -> None:
        if self.backend not in ("local", "openai"):
            raise TranscriptionError(f"backend must be 'local' or 'openai', got {self.backend!r}")
        if self.max_retries < 0:
            raise TranscriptionError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise TranscriptionError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_upload_bytes < _MIN_CHUNK_S * UPLOAD_BITRATE / 8 * 2:
            raise TranscriptionError(
                f"max_upload_bytes={self.max_upload_bytes} is too small to hold "
                f"{_MIN_CHUNK_S:g} s of {UPLOAD_BITRATE // 1000} kbps audio"
            )


@dataclass(frozen=True)
class TranscriptionResult:
    transcript: Transcript
    backend: str  # "local:<model>" or "openai:<model>"
    audio_seconds: float
    cost_usd: float


def options_fingerprint(options: TranscribeOptions) -> str:
    """A short stable hash of what changes the transcript: backend, model and decoding."""
    if options.backend == "local":
        loc = options.local
        parts: dict[str, object] = {
            "backend": "local",
            "model": loc.model,
            "language": loc.language,
            "beam_size": loc.beam_size,
            "vad_filter": loc.vad_filter,
        }
    else:
        parts = {"backend": "openai", "model": options.openai_model}
    parts["version"] = _FINGERPRINT_VERSION
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def transcribe_video(path: Path, options: TranscribeOptions) -> TranscriptionResult:
    """Transcribe the first audio track of ``path``; raises MediaError or TranscriptionError."""
    started = time.perf_counter()
    if options.backend == "local":
        transcript = transcribe_file(path, options.local)
        result = TranscriptionResult(
            transcript, f"local:{options.local.model}", transcript.duration, 0.0
        )
    else:
        result = _transcribe_openai(Path(path), options)
    log.info(
        "transcribed %s (%.1f s of audio, %d segments) with %s in %.2f s, $%.4f",
        path,
        result.audio_seconds,
        len(result.transcript.segments),
        result.backend,
        time.perf_counter() - started,
        result.cost_usd,
    )
    return result


def transcript_to_json(t: Transcript) -> dict[str, object]:
    segments = [{"start": s.start, "end": s.end, "text": s.text} for s in t.segments]
    return {"language": t.language, "duration": t.duration, "segments": segments}


def transcript_from_json(d: object) -> Transcript:
    """Inverse of :func:`transcript_to_json`; raises TranscriptionError on malformed input."""
    try:
        if not isinstance(d, dict) or not isinstance(d["segments"], list):
            raise TypeError("expected an object with a 'segments' list")
        language, duration = d["language"], d["duration"]
        if not isinstance(language, str) or not isinstance(duration, int | float):
            raise TypeError("'language' must be a string and 'duration' a number")
        segments = tuple(
            Segment(start=float(s["start"]), end=float(s["end"]), text=_str(s["text"]))
            for s in d["segments"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TranscriptionError(f"malformed transcript JSON: {exc!r}") from exc
    return Transcript(segments=segments, language=language, duration=float(duration))


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"segment text must be a string, got {type(value).__name__}")
    return value


# --- OpenAI backend ---------------------------------------------------------------------


def _transcribe_openai(path: Path, options: TranscribeOptions) -> TranscriptionResult:
    api_key = _api_key(options)
    samples = decode_audio_file(path)  # MediaError for no audio track / undecodable file
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    audio_seconds = len(pcm) / SAMPLE_RATE
    chunks = _chunks(pcm, options.max_upload_bytes)
    log.debug("%s: uploading %.1f s of audio in %d chunk(s)", path, audio_seconds, len(chunks))
    segments: list[Segment] = []
    language = ""
    with openai.OpenAI(
        api_key=api_key,
        base_url=options.openai_base_url,
        max_retries=options.max_retries,
        timeout=options.timeout_s,
    ) as client:
        for index, (start, end, data) in enumerate(chunks):
            name = f"{path.stem}.part{index}.mp3" if len(chunks) > 1 else f"{path.stem}.mp3"
            answer = _upload(client, name, data, options)
            language = language or answer.language
            offset, chunk_end = start / SAMPLE_RATE, end / SAMPLE_RATE
            if answer.segments is None:  # a server that ignores timestamp_granularities
                pieces = [(0.0, chunk_end - offset, answer.text)] if answer.text.strip() else []
            else:
                pieces = [(s.start, s.end, s.text) for s in answer.segments]
            segments.extend(_shift(s, e, text, offset, chunk_end) for s, e, text in pieces)
    segments.sort(key=lambda s: (s.start, s.end))
    transcript = Transcript(tuple(segments), language, audio_seconds)
    cost = audio_seconds / 60.0 * options.usd_per_minute
    return TranscriptionResult(transcript, f"openai:{options.openai_model}", audio_seconds, cost)


def _shift(start: float, end: float, text: str, offset: float, limit: float) -> Segment:
    """A chunk-relative segment moved to file time and clamped into its chunk."""
    begin = min(offset + max(0.0, start), limit)
    return Segment(round(begin, 3), round(min(max(offset + end, begin), limit), 3), text.strip())


def _api_key(options: TranscribeOptions) -> str:
    try:
        return api_key_from_env(options.api_key_env, options.openai_base_url)
    except MissingAPIKey as exc:
        raise TranscriptionError(str(exc)) from exc


def _upload(
    client: openai.OpenAI, name: str, data: bytes, options: TranscribeOptions
) -> TranscriptionVerbose:
    """One chunk's verbose transcription (the client retries what a retry can fix)."""
    try:
        answer = client.audio.transcriptions.create(
            model=options.openai_model,
            file=(name, data, "audio/mpeg"),
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    except openai.APIError as exc:
        raise TranscriptionError(f"{name}: {describe_error(exc, options.timeout_s)}") from exc
    except ValueError as exc:  # a 200 whose body is not JSON
        raise TranscriptionError(f"{name}: malformed response: body is not JSON") from exc
    if not isinstance(answer, TranscriptionVerbose):
        kind = type(answer).__name__
        raise TranscriptionError(f"{name}: malformed response: got {kind}, not verbose_json")
    return answer


def _chunks(pcm: npt.NDArray[np.int16], max_bytes: int) -> list[tuple[int, int, bytes]]:
    """(start sample, end sample, MP3 bytes) chunks, each at most ``max_bytes``."""
    per_chunk = int(0.9 * max_bytes * 8 / UPLOAD_BITRATE * SAMPLE_RATE)  # CBR: size ~ time
    chunks: list[tuple[int, int, bytes]] = []
    start = 0
    while start < len(pcm):
        if per_chunk < _MIN_CHUNK_S * SAMPLE_RATE:
            raise TranscriptionError(f"cannot fit audio chunks into {max_bytes} bytes")
        end = min(len(pcm), start + per_chunk)
        if end < len(pcm):
            end = _quietest(pcm, start + int(per_chunk * 0.8), end)
        data = _encode_mp3(pcm[start:end])
        if len(data) > max_bytes:
            per_chunk = int(per_chunk * 0.8)
            continue
        chunks.append((start, end, data))
        start = end
    return chunks


def _quietest(pcm: npt.NDArray[np.int16], lo: int, hi: int) -> int:
    """The middle of the quietest window in ``pcm[lo:hi]``: a cut that splits no word."""
    window = int(_QUIET_WINDOW_S * SAMPLE_RATE)
    n = (hi - lo) // window
    if n < 1:
        return hi
    frames = pcm[lo : lo + n * window].astype(np.float64).reshape(n, window)
    return lo + int(np.argmin((frames**2).mean(axis=1))) * window + window // 2


def _encode_mp3(pcm: npt.NDArray[np.int16]) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = UPLOAD_BITRATE
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
