"""Opening a video file and reading its header.

:func:`check_file` and :func:`open_video` turn a missing, empty or unreadable file into a
:class:`MediaError` that names it and says what is wrong; :func:`video_stream` picks the
video stream (an audio-only file is an error, cover art is not video). :func:`probe_video`
reads the header and a few packets (no decoding) into a :class:`VideoInfo`.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import av
from av.container import InputContainer
from av.video.stream import VideoStream

from lavia_live.errors import MediaError

logger = logging.getLogger(__name__)

# Packets demuxed (not decoded) by probe_video to tell constant from variable frame rate.
_PROBE_PACKETS = 240


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float  # average rate; 0.0 when the file does not say
    duration_s: float
    n_frames: int | None  # as the container states it; None when unknown
    has_audio: bool
    variable_frame_rate: bool


def probe_video(path: str | Path) -> VideoInfo:
    """Read a file's header (and a few packets, no decoding) into a :class:`VideoInfo`."""
    p = check_file(path)
    with open_video(p) as container:
        stream = video_stream(container, p)
        fps = stream_fps(stream)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        return VideoInfo(
            path=str(p),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            duration_s=duration,
            n_frames=stream.frames or None,
            has_audio=bool(container.streams.audio),
            variable_frame_rate=_looks_variable(container, stream, p),
        )


def check_file(path: str | Path) -> Path:
    """``path`` as a :class:`Path`, if it is a regular, non-empty file."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if not p.is_file():
        raise MediaError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: empty file (0 bytes)")
    return p


def open_video(p: Path) -> InputContainer:
    """``p`` opened for reading (a context manager); an unreadable file is a MediaError."""
    try:
        return av.open(str(p), mode="r", metadata_errors="replace")
    except av.error.InvalidDataError as exc:
        raise MediaError(
            f"{p}: not a readable media file (unknown format, corrupt, or truncated "
            f"before its index): {exc}"
        ) from exc
    except av.FFmpegError as exc:
        raise MediaError(f"{p}: cannot open: {exc}") from exc


def video_stream(container: InputContainer, p: Path) -> VideoStream:
    """The first real video stream (cover art, an "attached picture", does not count)."""
    cover = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not s.disposition & cover]
    if not videos:
        audio = len(container.streams.audio)
        kind = f"audio only, {audio} audio stream(s)" if audio else "no audio either"
        if container.streams.video:
            kind += ", cover art ignored"
        raise MediaError(f"{p}: no video stream ({kind})")
    return videos[0]


def stream_fps(stream: VideoStream) -> float:
    """The stream's frame rate as the file states it; 0.0 when it does not."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and math.isfinite(float(rate)) and rate > 0:
            return float(rate)
    return 0.0


def _looks_variable(container: InputContainer, stream: VideoStream, p: Path) -> bool:
    """True when the first packets are not evenly spaced (demuxed only, not decoded)."""
    base, avg = stream.base_rate, stream.average_rate
    if base and avg and abs(float(base) - float(avg)) > 0.01 * float(avg):
        return True
    stamps: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                stamps.append(packet.pts)
            if len(stamps) >= _PROBE_PACKETS:
                break
    except av.FFmpegError as exc:
        logger.warning("%s: probing packet timestamps failed: %s", p, exc)
    stamps.sort()
    gaps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
    if len(gaps) < 2:
        return False
    typical = statistics.median(gaps)
    tolerance = max(1.5, 0.05 * typical)  # timestamp rounding: a tick or a few percent
    return any(abs(g - typical) > tolerance for g in gaps)
