"""Cut a video file into clips of sampled frames, each frame resized and JPEG-encoded.

The frame choice is the contract's (:mod:`lavia_live.contract.sampling`): every decoded
frame's timestamp goes through a :class:`TimestampSampler`, exactly as live video does, so
variable-frame-rate files and timestamp oddities are handled the same way on both sides.
For a constant-rate file the kept frames are those of :func:`plan_clips` (one per second of
real time; clip ``k`` is kept samples ``[15k, 15k + 15)``).

Each file is decoded once (and demuxed twice), in FFmpeg's threads or in ranges (below).
Only kept frames are converted: one swscale pass resizes and converts to RGB, then Pillow
encodes the JPEG.
:func:`iter_clips` is a generator holding one clip's JPEGs at a time (in ranges: the kept
frames of a few ranges), so memory stays bounded for long 4K files.

Skipping pictures nobody needs. In H.264 and HEVC with B-frames, some pictures (most
B-frames) are non-reference: no other picture is predicted from them, so a decoder that
never sees one decodes every other picture to exactly the same pixels. Before decoding, the
file's packets are demuxed once without decoding (cheap) to collect every frame's pts; in
presentation order they go through the same :class:`TimestampSampler`, which gives exactly
the frames the decode-everything path keeps. The decoding pass then withholds the packets
of non-reference pictures that are not kept (the NAL unit headers say which: H.264
``nal_ref_idc == 0``; HEVC sub-layer non-reference types in the highest temporal layer).
The frames not decoded are still offered to the sampler, in presentation order, so every
decision and timestamp is the decode-everything path's. Anything this does not cover
(Annex B streams, other codecs, packets without pts, timestamps that are not a bounded
reordering of presentation order, edit lists that drop frames, a stream not starting at an
IDR picture, a malformed packet) decodes every frame, as before.

Ranges in parallel. A file of a minute or more with two or more IDR pictures is decoded by
worker processes (one per core by default, ``ExtractOptions.workers``), each taking a range
of packets that starts at an IDR picture: a decoder needs nothing from before an IDR
picture, so each frame is still decoded once, to the same pixels; each range skips its own
unkept non-reference pictures and stops once its last kept frame is out. The sampler runs
once, in the calling process, over the scan's presentation order, so the frames kept, their
times and the clips are exactly those of one pass. A range whose kept frames do not all
come out is decoded again in the calling process, every picture; a worker that dies has
its range decoded there too. Open-GOP streams whose only IDR picture is the first
(recovery points at CRA or I pictures) are decoded in one pass.
"""

from __future__ import annotations

import heapq
import io
import itertools
import logging
import math
import multiprocessing
import os
import statistics
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
from av.container import InputContainer
from av.packet import Packet
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
# The scan for skippable pictures gives up (decoding everything) after this many packets
# without one: a stream without B-frames has none, and reading it all would be wasted.
_SCAN_GIVE_UP = 600
# Reorder depth assumed when PyAV does not say (H.264's and HEVC's largest picture buffer).
_MAX_REORDER = 16
# Files with fewer frames are decoded in one pass: starting processes would cost more.
_RANGES_MIN_FRAMES = 1800
# Ranges per worker process: enough to even out the load, few enough to seek rarely.
_RANGES_PER_WORKER = 8
# At most this many packets a range (5 minutes at 30 fps), unless IDR pictures are rarer.
_RANGE_MAX_PACKETS = 9000


@dataclass(frozen=True)
class ExtractOptions:
    max_side: int = 448  # resize so the longer side is at most this (keep aspect, even dims)
    jpeg_quality: int = 90
    min_frames: int = 8  # keep the last partial clip when it has at least this many frames
    # FFmpeg decoder threads; 0 lets FFmpeg use every core. A build that decodes one video
    # per core in parallel does better with 1 (frame threading costs 15-20% extra CPU).
    decode_threads: int = 0
    # Processes decoding ranges of a long H.264/HEVC file in parallel (each range starts at
    # an IDR picture, so every frame is still decoded once, to the same pixels); 0: one
    # per core, 1: one pass in this process. Files shorter than a minute use one pass.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.max_side < 2:
            raise ValueError(f"max_side must be >= 2, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0, got {self.decode_threads}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


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


@dataclass
class DecodeStats:
    """What one :func:`iter_clips` run read and decoded, filled in as it goes."""

    packets: int = 0  # video packets read from the file
    packets_decoded: int = 0  # of those, sent to the decoder (the others: skipped pictures)
    frames_decoded: int = 0
    frames_kept: int = 0
    clips: int = 0
    skipping: bool = False  # whether non-reference pictures not kept were skipped
    why_not_skipping: str = ""  # when not: why every packet had to be decoded
    ranges: int = 1  # ranges decoded in parallel processes (1: one pass)
    elapsed_s: float = 0.0
    irregular: int = 0  # decoded frames out of the packets' presentation order (see log)


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
    path: str | Path,
    spec: SamplingSpec | None = None,
    options: ExtractOptions | None = None,
    *,
    stats: DecodeStats | None = None,
) -> Iterator[ExtractedClip]:
    """Decode ``path`` once and yield its clips in order (errors surface on iteration).

    Non-reference pictures that are not kept are not decoded (see the module docstring);
    ``stats``, when given, is filled in with what was read and decoded.

    A decoding error part-way raises :class:`MediaError` naming the file and the time
    reached, after the clips completed before it have been yielded.
    """
    return _iter_clips(path, spec, options, stats=stats, skip_disposable=True)


def _iter_clips(
    path: str | Path,
    spec: SamplingSpec | None,
    options: ExtractOptions | None,
    *,
    stats: DecodeStats | None,
    skip_disposable: bool,
) -> Iterator[ExtractedClip]:
    """:func:`iter_clips`; ``skip_disposable=False`` decodes every frame (for comparison)."""
    spec = spec or SamplingSpec()
    options = options or ExtractOptions()
    p = _check_file(path)
    with _open(p) as container:
        cutter = _ClipCutter(container, p, spec, options, stats or DecodeStats())
        yield from cutter.run(skip_disposable)


class _ClipCutter:
    """One pass over one file: sample, convert and group frames into clips."""

    def __init__(
        self,
        container: InputContainer,
        path: Path,
        spec: SamplingSpec,
        options: ExtractOptions,
        stats: DecodeStats,
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
        self.stats = stats
        # Skipping: the next entry of the plan's presentation order not yet offered, and the
        # pts of skipped packets whose frames have not been offered yet (a reorder window).
        self.at = 0
        self.skipped: set[int] = set()

    def run(self, skip_disposable: bool) -> Iterator[ExtractedClip]:
        started = time.perf_counter()
        plan, why_not = None, "disabled"
        workers = self._workers()
        if skip_disposable:
            plan, why_not = _plan_skipping(self.path, self.stream, self.spec, whole=workers > 1)
        self.stats.skipping = plan is not None and plan.skips
        self.stats.why_not_skipping = why_not
        ranges = _ranges(self.path, self.stream.index, plan, self.options, workers)
        if plan is not None and len(ranges) > 1:
            yield from self._run_ranges(plan, ranges, workers)
            self.stats.elapsed_s = time.perf_counter() - started
            logger.info(
                "%s: %d ranges in %d processes, %d of %d packets decoded, %d clips in %.1f s",
                *(self.path, len(ranges), workers, self.stats.packets_decoded),
                *(self.stats.packets, self.index, self.stats.elapsed_s),
            )
            return
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = self.options.decode_threads
        frames = self._decode(plan)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                yield from self._flush_full(self.reached)
                raise self._error("decoding failed", exc) from exc
            self.stats.frames_decoded += 1
            t = self._offer(frame) if plan is None else self._offer_in_order(frame, plan)
            if t is None:
                continue
            self.stats.frames_kept += 1
            if len(self.times) == self.spec.clip_frames:
                yield self._emit(end_s=t)
            try:
                self.jpegs.append(self._jpeg(frame))
            except av.FFmpegError as exc:
                raise self._error("converting a frame failed", exc) from exc
            self.times.append(t)
        if self.stats.frames_decoded == 0:
            raise MediaError(f"{self.path}: no decodable video frames")
        if plan is not None:  # frames shown after the last decoded one
            while self.at < len(plan.order):
                self._pass(plan)
        if len(self.times) >= min(self.options.min_frames, self.spec.clip_frames):
            yield self._emit(end_s=self.reached + self.period)
        self.stats.elapsed_s = time.perf_counter() - started
        if self.stats.irregular > 1:
            logger.warning("%s: %d irregular frames in all", self.path, self.stats.irregular)
        logger.info(
            "%s: %d of %d packets decoded (%s), %d frames kept, %d clips in %.1f s",
            self.path,
            self.stats.packets_decoded,
            self.stats.packets,
            "non-reference pictures skipped" if plan else f"all: {why_not}",
            self.stats.frames_kept,
            self.index,
            self.stats.elapsed_s,
        )

    def _workers(self) -> int:
        """Processes for decoding ranges: 1 unless the file is long enough to pay for them."""
        workers = self.options.workers or len(os.sched_getaffinity(0))
        frames = self.stream.frames
        if not frames:  # e.g. Matroska: from the duration
            stream, duration = self.stream, self.container.duration
            if stream.duration is not None and stream.time_base is not None:
                frames = round(float(stream.duration * stream.time_base) / self.period)
            elif duration is not None:
                frames = round(duration / av.time_base / self.period)
        return workers if frames >= _RANGES_MIN_FRAMES else 1

    def _run_ranges(
        self, plan: _SkipPlan, ranges: list[_Range], workers: int
    ) -> Iterator[ExtractedClip]:
        """Decode ``ranges`` in ``workers`` processes; yield the same clips, in order, as one
        pass would. The sampler runs here over ``plan.order``, as one pass offers it."""
        kept: list[tuple[int, float]] = []
        for pts in plan.order:
            t = self._offer_pts(pts, plan.time_base)
            if t is not None:
                kept.append((pts, t))
        self.stats.frames_kept = len(kept)
        last_end = self.reached + self.period
        n = self.spec.clip_frames
        clips = [kept[i : i + n] for i in range(0, len(kept), n)]
        if clips and len(clips[-1]) < min(self.options.min_frames, n):
            clips.pop()
        self.stats.ranges = len(ranges)
        jpegs: dict[int, bytes] = {}
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

        def submit(job: _Range) -> Future[_RangeResult] | None:
            try:
                return pool.submit(_decode_range, job)
            except BrokenProcessPool:  # a worker died: the rest is decoded here
                return None

        try:
            # A few ranges in flight at a time, so memory stays bounded on long files.
            ahead = [submit(r) for r in ranges[: 2 * workers]]
            for k, job in enumerate(ranges):
                future = ahead.pop(0)
                if k + len(ahead) + 1 < len(ranges):
                    ahead.append(submit(ranges[k + len(ahead) + 1]))
                result = None
                try:
                    result = future.result() if future is not None else None
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                    logger.warning("%s: decoding process lost (%s); decoding here", self.path, exc)
                if result is None:
                    result = _decode_range(job)
                if result.error is None and not job.plan.keep <= result.jpegs.keys():
                    # A kept frame did not come out (irregular stream): decode the range
                    # again here, every picture, as one pass would.
                    result = _decode_range(replace(job, plan=replace(job.plan, skips=False)))
                    if result.error is None and not job.plan.keep <= result.jpegs.keys():
                        result.error = "kept frames missing from the decoder"
                self.stats.packets += result.packets
                self.stats.packets_decoded += result.packets_decoded
                self.stats.frames_decoded += result.frames_decoded
                jpegs.update(result.jpegs)
                while self.index < len(clips) and all(p in jpegs for p, _ in clips[self.index]):
                    frames = clips[self.index]
                    self.times = [t for _, t in frames]
                    self.jpegs = [jpegs.pop(p) for p, _ in frames]
                    after = (self.index + 1) * n
                    yield self._emit(kept[after][1] if after < len(kept) else last_end)
                if result.error is not None:
                    self.reached = float(job.start_pts * plan.time_base)
                    raise self._error("decoding failed", result.error)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _decode(self, plan: _SkipPlan | None) -> Iterator[VideoFrame]:
        """The decoded frames, in output order; with a plan, its skippable packets unsent."""
        for packet in self.container.demux(self.stream):
            if packet.size:  # (the last, empty packet flushes the decoder)
                self.stats.packets += 1
                if plan is not None and plan.skippable(packet):
                    assert packet.pts is not None  # (a plan has checked every packet)
                    self.skipped.add(packet.pts)
                    continue
                self.stats.packets_decoded += 1
            for frame in packet.decode():
                if isinstance(frame, VideoFrame):
                    yield frame

    def _offer_in_order(self, frame: VideoFrame, plan: _SkipPlan) -> float | None:
        """:meth:`_offer` when skipping: first the frames shown before this one that were
        not decoded, as the decode-everything path would have offered them, then this one."""
        pts = frame.pts
        if pts is None or frame.time_base != plan.time_base:
            self._irregular(f"a frame without the stream's timestamps ({pts}, {frame.time_base})")
            return None
        order = plan.order
        while self.at < len(order) and order[self.at] < pts:
            self._pass(plan)
        if self.at == len(order) or order[self.at] != pts:
            self._irregular(f"the frame at pts {pts} came out of presentation order")
            return None
        self.at += 1
        return self._offer_pts(pts, plan.time_base)

    def _pass(self, plan: _SkipPlan) -> None:
        """Offer the next frame in presentation order, which was not decoded. The sampler
        sees exactly ``plan.order``, as when the plan was made, so it does not keep it
        (unless the decoder lost a kept frame: irregular)."""
        pts = plan.order[self.at]
        self.at += 1
        if pts in self.skipped:
            self.skipped.remove(pts)
        else:
            self._irregular(f"no frame came out of the decoder for pts {pts}")
        self._offer_pts(pts, plan.time_base)

    def _irregular(self, what: str) -> None:
        self.stats.irregular += 1
        if self.stats.irregular == 1:
            logger.warning(
                "%s: %s; the frames kept may differ from those of a full decode", self.path, what
            )

    def _offer(self, frame: VideoFrame) -> float | None:
        """Feed one frame's timestamp to the sampler; its file time if it is kept."""
        return self._offer_pts(frame.pts, frame.time_base)

    def _offer_pts(self, pts: int | None, time_base: Fraction | None) -> float | None:
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
        return _jpeg(frame, self.stream, self.options)

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
        self.stats.clips = self.index
        self.times, self.jpegs = [], []
        return clip

    def _flush_full(self, end_s: float) -> Iterator[ExtractedClip]:
        if len(self.times) == self.spec.clip_frames:
            yield self._emit(end_s)

    def _error(self, what: str, exc: BaseException | str) -> MediaError:
        return MediaError(
            f"{self.path}: {what} at {self.reached:.2f} s after {self.index} complete "
            f"clip(s): {exc}"
        )


def _jpeg(frame: VideoFrame, stream: VideoStream, options: ExtractOptions) -> bytes:
    """Resize (one swscale pass, display orientation and aspect) and JPEG-encode."""
    turn = round(frame.rotation / 90) * 90 % 360
    sar = stream.codec_context.sample_aspect_ratio
    width = frame.width * (float(sar) if sar else 1.0)
    disp_w, disp_h = (frame.height, width) if turn in (90, 270) else (width, frame.height)
    out_w, out_h = scaled_size(round(disp_w), round(disp_h), options.max_side)
    if turn in (90, 270):
        out_w, out_h = out_h, out_w
    # threads=1: a new swscale context per call; its own thread pool would cost more.
    rgb = frame.reformat(width=out_w, height=out_h, format="rgb24", threads=1)
    image = rgb.to_image()
    if turn in _ROTATIONS:
        image = image.transpose(_ROTATIONS[turn])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.jpeg_quality)
    return buffer.getvalue()


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


# --------------------------------------------------------------------------- skipping


class _Picture(NamedTuple):
    """What the NAL unit headers of one packet say about its picture."""

    disposable: bool  # no later picture of its temporal layer is predicted from it
    layer: int  # temporal sub-layer (HEVC TemporalId; 0 in H.264)
    idr: bool  # an IDR picture: decoding can start here


def _nal_headers(data: memoryview, length_size: int, header_size: int) -> list[bytes] | None:
    """The header of each NAL unit of a length-prefixed packet; None when malformed."""
    headers: list[bytes] = []
    at, end = 0, len(data)
    while at < end:
        start = at + length_size
        size = int.from_bytes(data[at:start], "big")
        if size < header_size or start + size > end:
            return None
        headers.append(bytes(data[start : start + header_size]))
        at = start + size
    return headers


# H.264 NAL unit types: slice of a non-IDR / IDR picture, and those that carry nothing a
# later picture needs (SEI, access unit delimiter, filler). Any other type (parameter sets,
# data partitions, extensions) makes the packet one to decode.
_H264_SLICE, _H264_IDR = 1, 5
_H264_INERT = frozenset({6, 9, 12})


def _h264_picture(headers: Sequence[bytes]) -> _Picture | None:
    slices: list[tuple[int, int]] = []  # (nal_unit_type, nal_ref_idc)
    inert = True
    for (byte,) in headers:
        if byte & 0x80:  # forbidden_zero_bit
            return None
        kind = byte & 0x1F
        if kind in (_H264_SLICE, _H264_IDR):
            slices.append((kind, (byte >> 5) & 3))
        elif kind not in _H264_INERT:
            inert = False
    if not slices:
        return None
    disposable = inert and all(kind == _H264_SLICE and ref == 0 for kind, ref in slices)
    return _Picture(disposable, 0, any(kind == _H264_IDR for kind, _ in slices))


# HEVC: sub-layer non-reference picture types (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N and
# the reserved RSV_VCL_N10/12/14), IDR types, and inert non-VCL types (access unit
# delimiter, filler, prefix and suffix SEI).
_HEVC_SUBLAYER_NONREF = frozenset({0, 2, 4, 6, 8, 10, 12, 14})
_HEVC_IDR = frozenset({19, 20})
_HEVC_INERT = frozenset({35, 38, 39, 40})


def _hevc_picture(headers: Sequence[bytes]) -> _Picture | None:
    kinds: list[int] = []
    layers: set[int] = set()
    inert = True
    for first, second in headers:
        if first & 0x80 or (first & 1) or (second >> 3):  # forbidden bit, nuh_layer_id > 0
            return None
        kind, temporal_id = (first >> 1) & 0x3F, (second & 7) - 1
        if temporal_id < 0:
            return None
        if kind < 32:  # a slice
            kinds.append(kind)
            layers.add(temporal_id)
        elif kind not in _HEVC_INERT:
            inert = False
    if not kinds or len(layers) != 1:
        return None
    disposable = inert and all(kind in _HEVC_SUBLAYER_NONREF for kind in kinds)
    return _Picture(disposable, layers.pop(), any(kind in _HEVC_IDR for kind in kinds))


class _Syntax(NamedTuple):
    """How to read one codec's length-prefixed NAL units (AVCC / hvcC in mp4, mkv, mov)."""

    header_size: int  # bytes of a NAL unit header
    length_byte: int  # byte of the decoder configuration record holding lengthSizeMinusOne
    picture: Callable[[Sequence[bytes]], _Picture | None]


_SYNTAXES = {"h264": _Syntax(1, 4, _h264_picture), "hevc": _Syntax(2, 21, _hevc_picture)}


@dataclass(frozen=True)
class _SkipPlan:
    """Which packets the decoder need not see: disposable pictures the sampler drops.

    Only the bitstream says what is disposable: the NAL unit headers the decoder itself
    goes by. The container's flag (PyAV's ``Packet.is_disposable``, FFmpeg's
    AV_PKT_FLAG_DISPOSABLE, which the mov demuxer takes from an ``sdtp`` box) is not used:
    files written by FFmpeg and x264 leave it unset, and a wrong one would change the
    pixels of later frames without a word."""

    syntax: _Syntax
    length_size: int
    top_layer: int  # the highest temporal layer: its disposable pictures are never used
    time_base: Fraction
    order: array[int]  # every frame's pts in presentation order (8 bytes a frame)
    keep: frozenset[int] = field(repr=False)  # pts of the frames the sampler keeps
    skips: bool = True  # False: the stream has no disposable pictures; all are decoded
    # For decoding ranges in parallel: every packet's pts in decode order, and the decode
    # positions of the IDR pictures (where a decoder can start from nothing).
    decode_order: array[int] = field(default_factory=lambda: array("q"), repr=False)
    idr: tuple[int, ...] = ()

    def skippable(self, packet: Packet[Any]) -> bool:
        if not self.skips or packet.pts is None or packet.pts in self.keep:
            return False
        picture = _read_picture(packet, self.syntax, self.length_size)
        return picture is not None and picture.disposable and picture.layer == self.top_layer


def _read_picture(packet: Packet[Any], syntax: _Syntax, length_size: int) -> _Picture | None:
    headers = _nal_headers(memoryview(packet), length_size, syntax.header_size)
    return None if headers is None else syntax.picture(headers)


def _plan_skipping(
    path: Path, stream: VideoStream, spec: SamplingSpec, *, whole: bool = False
) -> tuple[_SkipPlan | None, str]:
    """Demux (no decoding) the stream's packets into a :class:`_SkipPlan`: the sampler run
    over every pts in presentation order. ``(None, why)`` when every frame must be decoded
    in one pass. With ``whole``, a stream without disposable pictures still gets a plan
    (``skips`` False, ``why`` says so): its IDR positions let ranges decode in parallel.
    """
    codec = stream.codec_context
    syntax = _SYNTAXES.get(codec.name)
    if syntax is None:
        return None, f"codec {codec.name} (only H.264 and HEVC pictures are skipped)"
    config = codec.extradata or b""
    if len(config) <= syntax.length_byte or config[0] != 1:
        return None, "NAL units not length-prefixed (Annex B)"
    length_size = (config[syntax.length_byte] & 3) + 1
    if length_size == 3 or stream.time_base is None:
        return None, "invalid NAL length size" if length_size == 3 else "no time base"
    depth = getattr(codec, "reorder_depth", None)  # the decoder's has_b_frames (newer PyAV)
    depth = depth if isinstance(depth, int) else _MAX_REORDER
    scanned = _scan(path, stream.index, syntax, length_size, depth, whole=whole)
    if isinstance(scanned, str):
        return None, scanned
    sampler = TimestampSampler(spec)
    time_base = stream.time_base
    keep = frozenset(pts for pts in scanned.order if sampler.offer(pts, time_base) is not None)
    plan = _SkipPlan(
        syntax,
        length_size,
        scanned.top_layer,
        time_base,
        scanned.order,
        keep,
        skips=scanned.disposable,
        decode_order=scanned.decode_order,
        idr=tuple(scanned.idr),
    )
    return plan, "" if scanned.disposable else _NO_DISPOSABLE


_NO_DISPOSABLE = "no non-reference pictures"


class _Scanned(NamedTuple):
    order: array[int]  # pts in presentation order
    decode_order: array[int]  # pts in decode (file) order
    idr: list[int]  # decode positions of IDR pictures
    top_layer: int
    disposable: bool  # whether any picture is disposable


def _scan(
    path: Path, index: int, syntax: _Syntax, length_size: int, depth: int, *, whole: bool
) -> _Scanned | str:
    """Every pts in presentation and in decode order, the IDR positions and the top temporal
    layer, by demuxing stream ``index`` of ``path`` without decoding; or what rules skipping
    out. Without ``whole``, gives up early on a stream with no disposable pictures.

    The pts go through a reorder buffer of the decoder's depth, as the decoded frames do:
    they must come out strictly increasing (else timestamps jump back, repeat, or are
    reordered further than the decoder will, and its output order is not theirs)."""
    buffer = _ReorderBuffer(depth)
    top_layer, disposable, packets = 0, False, 0
    decode_order: array[int] = array("q")
    idr: list[int] = []
    try:
        with _open(path) as container:
            for packet in container.demux(container.streams[index]):
                if not packet.size:
                    continue
                packets += 1
                if packet.pts is None:
                    return "a packet without pts"
                if getattr(packet, "is_discard", False):
                    return "the container drops some frames (edit list)"
                picture = _read_picture(packet, syntax, length_size)
                if picture is None:
                    return f"packet {packets} is not a picture's length-prefixed NAL units"
                if packets == 1 and not picture.idr:
                    return "the stream does not start with an IDR picture"
                if picture.idr:
                    idr.append(packets - 1)
                decode_order.append(packet.pts)
                top_layer = max(top_layer, picture.layer)
                disposable = disposable or picture.disposable
                if not disposable and not whole and packets >= _SCAN_GIVE_UP:
                    return f"{_NO_DISPOSABLE} in the first {packets} packets"
                if not buffer.push(packet.pts):
                    return _OUT_OF_ORDER
    except (av.FFmpegError, MediaError) as exc:
        return f"demuxing failed: {exc}"
    if not buffer.drain():
        return _OUT_OF_ORDER
    if not disposable and not whole:
        return _NO_DISPOSABLE
    return _Scanned(buffer.order, decode_order, idr, top_layer, disposable)


_OUT_OF_ORDER = "timestamps that repeat, jump back or are reordered beyond the decoder's depth"


class _ReorderBuffer:
    """A decoder's reorder buffer of ``depth`` pictures, on timestamps in decode order:
    ``order`` receives them in the decoder's output order, which must be presentation
    order (strictly increasing); :meth:`push` and :meth:`drain` say whether it is."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.order: array[int] = array("q")
        self._pending: list[int] = []  # a heap

    def push(self, pts: int) -> bool:
        heapq.heappush(self._pending, pts)
        return len(self._pending) <= self.depth or self._emit(heapq.heappop(self._pending))

    def drain(self) -> bool:
        while self._pending:
            if not self._emit(heapq.heappop(self._pending)):
                return False
        return True

    def _emit(self, pts: int) -> bool:
        if self.order and pts <= self.order[-1]:
            return False
        self.order.append(pts)
        return True


# --------------------------------------------------------------------------- ranges
# A long file's packets, in decode order, split at IDR pictures into ranges that processes
# decode side by side. A decoder starting at an IDR picture needs nothing before it, so each
# frame is decoded once, to the pixels one pass gives; the sampler still runs once, here,
# over the plan's presentation order, so the frames kept and their times are one pass's.


@dataclass(frozen=True)
class _Range:
    """Packets ``[start_pts, stop_pts)`` of one stream, in decode order, for one process."""

    path: str
    stream_index: int
    start_pts: int  # an IDR picture's packet
    stop_pts: int | None  # the next range's first packet (None: to the end)
    packets: int
    plan: _SkipPlan  # ``keep``: this range's kept frames only; no order arrays
    options: ExtractOptions


@dataclass
class _RangeResult:
    jpegs: dict[int, bytes] = field(default_factory=dict)  # pts -> JPEG of each kept frame
    packets: int = 0
    packets_decoded: int = 0
    frames_decoded: int = 0
    error: str | None = None


def _ranges(
    path: Path, stream_index: int, plan: _SkipPlan | None, options: ExtractOptions, workers: int
) -> list[_Range]:
    """About ``_RANGES_PER_WORKER`` ranges per worker of similar length, cut at IDR pictures
    (fewer when the file has fewer); ``[]`` for one pass."""
    if plan is None or workers < 2 or len(plan.idr) < 2:
        return []
    order, total = plan.decode_order, len(plan.decode_order)
    wanted = max(workers * _RANGES_PER_WORKER, math.ceil(total / _RANGE_MAX_PACKETS))
    wanted = min(len(plan.idr), wanted)
    idr = plan.idr

    def nearest_idr(target: float) -> int:
        return min(idr, key=lambda i: abs(i - target))

    starts = sorted({nearest_idr(k * total / wanted) for k in range(wanted)})
    ranges = []
    for a, b in itertools.pairwise([*starts, total]):
        keep = frozenset(p for p in order[a:b] if p in plan.keep)
        light = replace(plan, keep=keep, order=array("q"), decode_order=array("q"), idr=())
        stop = order[b] if b < total else None
        ranges.append(_Range(str(path), stream_index, order[a], stop, b - a, light, options))
    return ranges


def _decode_range(job: _Range) -> _RangeResult:
    """Decode one range (in a worker process): the JPEGs of its kept frames and counts."""
    result = _RangeResult()
    # Seek to the range's IDR picture; if the seek went past it, read from the top.
    attempts = (True, False) if job.start_pts != 0 else (False,)
    try:
        for seek in attempts:
            with _open(Path(job.path)) as container:
                stream = container.streams[job.stream_index]
                assert isinstance(stream, VideoStream)
                stream.codec_context.thread_count = 1  # the parallelism is the processes'
                if seek:
                    container.seek(job.start_pts, backward=True, any_frame=False, stream=stream)
                if _decode_packets(container, stream, job, result):
                    return result
        result.error = f"no packet with pts {job.start_pts}"
    except (av.FFmpegError, MediaError) as exc:
        result.error = str(exc)
    return result


def _decode_packets(
    container: InputContainer, stream: VideoStream, job: _Range, result: _RangeResult
) -> bool:
    """Decode the range's packets from where ``container`` is; False if its first packet
    never came. Stops once every kept frame has come out: no later packet changes them."""
    keep = job.plan.keep
    if not keep:  # nothing kept here, nothing to decode
        result.packets = job.packets
        return True

    def take(frames: Iterable[Any]) -> None:
        for frame in frames:
            if isinstance(frame, VideoFrame):
                result.frames_decoded += 1
                if frame.pts in keep:
                    result.jpegs[frame.pts] = _jpeg(frame, stream, job.options)

    started = False
    for packet in container.demux(stream):
        if not packet.size:
            break
        if not started:
            if packet.pts != job.start_pts:
                continue
            started = True
        elif packet.pts == job.stop_pts:
            break
        result.packets += 1
        if job.plan.skippable(packet):
            continue
        result.packets_decoded += 1
        take(packet.decode())
        if len(result.jpegs) == len(keep):
            result.packets = job.packets  # the rest of the range is read no further
            return True
    if started:
        take(stream.decode(None))
    return started
