"""The per-video stage of a build: transcribe, then cut clips and write their frames.

:func:`process_video` is a plain function of serialisable arguments, so the same code runs
in-process or as a Ray task (``lavia data build --ray``) with identical outputs. Its result
is written to ``work/videos/<digest>.json`` only when the whole video was read, so a killed
or failed video is redone on the next run; frames and transcripts already written are kept.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lavia_live.atomic import atomic_write_bytes
from lavia_live.contract.sampling import SamplingSpec
from lavia_live.errors import LaviaError, MediaError
from lavia_live.speech.asr import TranscriptionOptions
from training.config import PipelineSettings
from training.data.clips import ExtractOptions, iter_clips, probe_video
from training.data.store import BuildStore, content_key, read_json
from training.data.transcribe import (
    TranscribeOptions,
    options_fingerprint,
    transcribe_video,
    transcript_to_json,
)

log = logging.getLogger(__name__)


@dataclass
class VideoOutcome:
    """What the video stage produced (JSON-serialisable; stored per video)."""

    digest: str
    path: str
    fps: float = 0.0
    duration_s: float = 0.0
    width: int = 0
    height: int = 0
    transcript_key: str | None = None
    transcript_backend: str | None = None
    transcription_cost_usd: float = 0.0
    clips: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the video failed (nothing, or only some clips, usable)
    notes: list[str] = field(default_factory=list)  # e.g. "no audio track"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VideoOutcome:
        return cls(**data)


def transcribe_options(settings: PipelineSettings) -> TranscribeOptions:
    t = settings.data.transcribe
    return TranscribeOptions(
        backend=t.backend,
        local=TranscriptionOptions(model=t.model, language=t.language, beam_size=t.beam_size),
        openai_model=t.openai_model,
        openai_base_url=t.base_url,
        api_key_env=t.api_key_env,
        max_retries=t.max_retries,
    )


def extract_options(settings: PipelineSettings) -> ExtractOptions:
    e = settings.data.extract
    return ExtractOptions(
        max_side=e.max_side, jpeg_quality=e.jpeg_quality, min_frames=e.min_frames, workers=e.workers
    )


def process_video(
    path: str, digest: str, settings_json: dict[str, Any], out: str, transcribe: bool
) -> dict[str, Any]:
    """Run the video stage; returns :meth:`VideoOutcome.to_json`. Never raises MediaError."""
    settings = PipelineSettings.model_validate(settings_json)
    store = BuildStore(Path(out))
    cached = read_json(store.video_path(digest))
    if isinstance(cached, dict):
        return cached
    outcome = VideoOutcome(digest=digest, path=path)
    try:
        info = probe_video(path)
    except MediaError as exc:
        outcome.error = str(exc)
        return outcome.to_json()
    outcome.fps, outcome.duration_s = info.fps, info.duration_s
    outcome.width, outcome.height = info.width, info.height
    if transcribe:
        _transcribe(Path(path), info.has_audio, settings, store, outcome)
    spec: SamplingSpec = settings.sampling.spec()
    hop = settings.data.extract.clip_hop or spec.clip_frames
    options = extract_options(settings)
    if hop < spec.clip_frames:  # windows are cut from all samples below, the tail included
        options = replace(options, min_frames=1)
    samples: list[tuple[float, str]] = []  # (timestamp, frame path) of every kept frame
    try:
        for clip in iter_clips(path, spec, options):
            first = len(samples)
            for k, jpeg in enumerate(clip.frames_jpeg):
                frame_path = store.frame_path(digest, clip.index * spec.clip_frames + k)
                if not frame_path.exists():
                    atomic_write_bytes(frame_path, jpeg)
                samples.append((clip.timestamps[k], store.relative(frame_path)))
            if hop == spec.clip_frames:
                outcome.clips.append(_clip(clip.index, samples[first:], clip.start_s, clip.end_s))
    except MediaError as exc:
        outcome.error = str(exc)
    if hop < spec.clip_frames:
        first_end = settings.sampling.min_frames_for_guidance - 1
        for index, end in enumerate(range(first_end, len(samples), hop)):
            window = samples[max(0, end - spec.clip_frames + 1) : end + 1]
            outcome.clips.append(
                _clip(index, window, window[0][0], window[-1][0] + spec.interval_s)
            )
    if outcome.error:
        outcome.error += f" ({len(outcome.clips)} clip(s) before the error kept)"
    else:
        store.write(store.video_path(digest), outcome.to_json())
    return outcome.to_json()


def _clip(index: int, samples: list[tuple[float, str]], start: float, end: float) -> dict[str, Any]:
    return {
        "index": index,
        "start_s": start,
        "end_s": end,
        "timestamps": [t for t, _ in samples],
        "frames": [f for _, f in samples],
    }


def _transcribe(
    path: Path, has_audio: bool, settings: PipelineSettings, store: BuildStore, out: VideoOutcome
) -> None:
    options = transcribe_options(settings)
    key = content_key("transcript", out.digest, options_fingerprint(options))
    out.transcript_key = key
    cached = read_json(store.transcript_path(key))
    if isinstance(cached, dict):
        out.transcript_backend = cached.get("backend")
        return
    if not has_audio:
        out.transcript_key = None
        out.notes.append("no audio track: built without a transcript")
        return
    try:
        result = transcribe_video(path, options)
    except LaviaError as exc:  # unreadable audio, an API that kept failing
        out.transcript_key = None
        out.notes.append(f"transcription failed, built without a transcript: {exc}")
        return
    out.transcript_backend = result.backend
    out.transcription_cost_usd = result.cost_usd
    store.write(
        store.transcript_path(key),
        {
            "backend": result.backend,
            "audio_seconds": result.audio_seconds,
            "cost_usd": result.cost_usd,
            "transcript": transcript_to_json(result.transcript),
        },
    )
