"""Cut a video file into clips of sampled frames, each frame resized and JPEG-encoded.

The frame choice is the contract's (:mod:`lavia_live.contract.sampling`): every decoded
frame's timestamp goes through a :class:`TimestampSampler`, exactly as live video does, so
variable-frame-rate files and timestamp oddities are handled the same way on both sides.
For a constant-rate file the kept frames are those of :func:`plan_clips` (one per second of
real time; clip ``k`` is kept samples ``[15k, 15k + 15)``).

Each file is decoded once, in FFmpeg's threads. Only kept frames are converted: one swscale
pass resizes and converts to RGB, then Pillow encodes the JPEG. :func:`iter_clips` is a
generator holding one clip's JPEGs at a time, so memory stays bounded for long 4K files.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from lavia_live.contract.sampling import SamplingSpec, TimestampSampler, plan_clips
from lavia_live.errors import MediaError

logger = logging.getLogger(__name__)

# Packets demuxed (not decoded) by probe_video to tell constant from variable frame rate.
_PROBE_PACKETS = 240
# Counterclockwise display rotation (degrees) -> the Pillow transpose that applies it.
_ROTATIONS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class ExtractOptions:
    max_side: int = 448  # resize so the longer side is at most this (keep aspect, even dims)
    jpeg_quality: int = 90
    min_frames: int = 8  # keep the last partial clip when it has at least this many frames

    def __post_init__(self) -> None:
        if self.max_side < 2:
            raise ValueError(f"max_side must be >= 2, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")


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


@dataclass(frozen=True)
class ExtractedClip:
    index: int
    start_s: float  # span of source time the clip covers: first kept frame ...
    end_s: float  # ... up to the next clip's first kept frame (or the end of the video)
    timestamps: tuple[float, ...]  # of the kept frames, seconds from the file start
    frames_jpeg: tuple[bytes, ...]  # oldest first


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Output size: longer side at most ``max_side``, aspect kept, both dimensions even."""
    scale = min(1.0, max_side / max(width, height))
    limit = max(2, max_side - max_side % 2)

    def even(x: float) -> int:
        return min(limit, max(2, 2 * round(x / 2)))

    return even(width * scale), even(height * scale)


def probe_video(path: str | Path) -> VideoInfo:
    """Read a file's header (and a few packets, no decoding) into a :class:`VideoInfo`."""
    p = _check_file(path)
    with _open(p) as container:
        stream = _video_stream(container, p)
        fps = _stream_fps(stream)
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


def count_clips(
    info: VideoInfo, spec: SamplingSpec | None = None, options: ExtractOptions | None = None
) -> int:
    """Clips :func:`iter_clips` will yield, without decoding (exact for constant-rate files
    whose frame count is known, else estimated from the duration)."""
    spec = spec or SamplingSpec()
    options = options or ExtractOptions()
    if info.n_frames and info.fps > 0 and not info.variable_frame_rate:
        return len(plan_clips(info.fps, info.n_frames, spec, min_frames=options.min_frames))
    samples = max(0, math.ceil(info.duration_s / spec.interval_s - 1e-9))
    full, rest = divmod(samples, spec.clip_frames)
    return full + int(rest > 0 and rest >= min(options.min_frames, spec.clip_frames))


def iter_clips(
    path: str | Path, spec: SamplingSpec | None = None, options: ExtractOptions | None = None
) -> Iterator[ExtractedClip]:
    """Decode ``path`` once and yield its clips in order (errors surface on iteration).

    A decoding error part-way raises :class:`MediaError` naming the file and the time
    reached, after the clips completed before it have been yielded.
    """
    spec = spec or SamplingSpec()
    options = options or ExtractOptions()
    p = _check_file(path)
    with _open(p) as container:
        yield from _ClipCutter(container, p, spec, options).run()


class _ClipCutter:
    """One pass over one file: sample, convert and group frames into clips."""

    def __init__(
        self, container: InputContainer, path: Path, spec: SamplingSpec, options: ExtractOptions
    ) -> None:
        self.container = container
        self.path = path
        self.spec = spec
        self.options = options
        self.stream = _video_stream(container, path)
        fps = _stream_fps(self.stream)
        self.period = 1.0 / fps if fps > 0 else spec.interval_s / spec.stride_frames
        self.sampler = TimestampSampler(spec)
        self.shift: float | None = None  # file time = sampler session time + shift
        self.raw: float | None = None  # seconds of the last frame seen, from its pts
        self.reached = 0.0  # file time of the last frame seen
        self.index = 0
        self.times: list[float] = []
        self.jpegs: list[bytes] = []

    def run(self) -> Iterator[ExtractedClip]:
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = 0  # one per core
        started, decoded, kept = time.perf_counter(), 0, 0
        frames = self.container.decode(self.stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                yield from self._flush_full(self.reached)
                raise self._error("decoding failed", exc) from exc
            decoded += 1
            t = self._offer(frame)
            if t is None:
                continue
            kept += 1
            if len(self.times) == self.spec.clip_frames:
                yield self._emit(end_s=t)
            try:
                self.jpegs.append(self._jpeg(frame))
            except av.FFmpegError as exc:
                raise self._error("converting a frame failed", exc) from exc
            self.times.append(t)
        if decoded == 0:
            raise MediaError(f"{self.path}: no decodable video frames")
        if len(self.times) >= min(self.options.min_frames, self.spec.clip_frames):
            yield self._emit(end_s=self.reached + self.period)
        elapsed = time.perf_counter() - started
        logger.info(
            "%s: %d frames decoded, %d kept, %d clips in %.1f s",
            *(self.path, decoded, kept, self.index, elapsed),
        )

    def _offer(self, frame: VideoFrame) -> float | None:
        """Feed one frame's timestamp to the sampler; its file time if it is kept."""
        pts, time_base = frame.pts, frame.time_base
        if pts is not None and time_base is not None:
            raw = float(pts * time_base)
            session = self.sampler.offer(pts, time_base)
        else:  # no timestamp (e.g. a raw elementary stream): assume the nominal rate
            raw = self.raw + self.period if self.raw is not None else 0.0
            session = self.sampler.offer(raw)
        if self.raw is not None and 0 < raw - self.raw <= self.spec.interval_s:
            self.period = raw - self.raw
        self.raw = raw
        if self.shift is None:  # the first frame's offset from the file start, if any
            start = self.container.start_time
            offset = raw - start / av.time_base if start is not None else 0.0
            self.shift = offset if offset > 1e-3 else 0.0  # start_time is rounded to 1 us
        self.reached = self.sampler.last_time + self.shift
        return None if session is None else session + self.shift

    def _jpeg(self, frame: VideoFrame) -> bytes:
        """Resize (one swscale pass, display orientation and aspect) and JPEG-encode."""
        turn = round(frame.rotation / 90) * 90 % 360
        sar = self.stream.codec_context.sample_aspect_ratio
        width = frame.width * (float(sar) if sar else 1.0)
        disp_w, disp_h = (frame.height, width) if turn in (90, 270) else (width, frame.height)
        out_w, out_h = scaled_size(round(disp_w), round(disp_h), self.options.max_side)
        if turn in (90, 270):
            out_w, out_h = out_h, out_w
        image = frame.reformat(width=out_w, height=out_h, format="rgb24").to_image()
        if turn in _ROTATIONS:
            image = image.transpose(_ROTATIONS[turn])
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.options.jpeg_quality)
        return buffer.getvalue()

    def _emit(self, end_s: float) -> ExtractedClip:
        clip = ExtractedClip(
            index=self.index,
            start_s=self.times[0],
            end_s=end_s,
            timestamps=tuple(self.times),
            frames_jpeg=tuple(self.jpegs),
        )
        logger.debug("%s: clip %d, %.2f-%.2f s", self.path, clip.index, clip.start_s, end_s)
        self.index += 1
        self.times, self.jpegs = [], []
        return clip

    def _flush_full(self, end_s: float) -> Iterator[ExtractedClip]:
        if len(self.times) == self.spec.clip_frames:
            yield self._emit(end_s)

    def _error(self, what: str, exc: BaseException) -> MediaError:
        return MediaError(
            f"{self.path}: {what} at {self.reached:.2f} s after {self.index} complete "
            f"clip(s): {exc}"
        )


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if not p.is_file():
        raise MediaError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: empty file (0 bytes)")
    return p


def _open(p: Path) -> InputContainer:
    try:
        return av.open(str(p), mode="r", metadata_errors="replace")
    except av.error.InvalidDataError as exc:
        raise MediaError(
            f"{p}: not a readable media file (unknown format, corrupt, or truncated "
            f"before its index): {exc}"
        ) from exc
    except av.FFmpegError as exc:
        raise MediaError(f"{p}: cannot open: {exc}") from exc


def _video_stream(container: InputContainer, p: Path) -> VideoStream:
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


def _stream_fps(stream: VideoStream) -> float:
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
