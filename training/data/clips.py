"""Cut a video file into clips of sampled frames, each frame resized and JPEG-encoded.

The frame choice is the contract's (:mod:`lavia_live.contract.sampling`): every decoded
frame's timestamp goes through a :class:`TimestampSampler`, exactly as live video does, so
variable-frame-rate files and timestamp oddities are handled the same way on both sides.
For a constant-rate file the kept frames are those of :func:`plan_clips` (one per second of
real time; clip ``k`` is kept samples ``[15k, 15k + 15)``).

Each file is decoded once (and demuxed twice), in FFmpeg's threads or in ranges
(:mod:`training.data.ranges`). Only kept frames are converted, by the contract's
:func:`~lavia_live.contract.frames.encode_frame`, the function the live server calls on its
sampled frames: one swscale pass resizes and converts to RGB, then Pillow encodes the JPEG.
:func:`iter_clips` is a generator holding one clip's JPEGs at a time (in ranges: the kept
frames of a few ranges), so memory stays bounded for long 4K files.

Non-reference pictures that are not kept are never sent to the decoder
(:mod:`training.data.pictures`); the frames not decoded are still offered to the sampler,
in presentation order, so every decision and timestamp is the decode-everything path's.
Opening and probing a file is :mod:`training.data.video`'s (:func:`probe_video` and
:class:`VideoInfo` are importable from here too).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.container import InputContainer
from av.video.frame import VideoFrame

from lavia_live.contract.frames import FrameFormat, encode_frame
from lavia_live.contract.sampling import SamplingSpec, TimestampSampler, plan_clips
from lavia_live.errors import MediaError
from training.data.pictures import SkipPlan, plan_skipping
from training.data.ranges import Range, decode_ranges, split_ranges, workers_for
from training.data.video import (
    VideoInfo,
    check_file,
    open_video,
    probe_video,
    stream_fps,
    video_stream,
)

__all__ = [
    "DecodeStats",
    "ExtractOptions",
    "ExtractedClip",
    "VideoInfo",
    "count_clips",
    "iter_clips",
    "probe_video",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractOptions:
    # The frame format (:class:`FrameFormat`): the longer side at most ``max_side`` (aspect
    # kept, even dimensions), JPEG quality ``jpeg_quality``.
    max_side: int = FrameFormat.max_side
    jpeg_quality: int = FrameFormat.jpeg_quality
    min_frames: int = 8  # keep the last partial clip when it has at least this many frames
    # FFmpeg decoder threads; 0 lets FFmpeg use every core. A build that decodes one video
    # per core in parallel does better with 1 (frame threading costs 15-20% extra CPU).
    decode_threads: int = 0
    # Processes decoding ranges of a long H.264/HEVC file in parallel (each range starts at
    # an IDR picture, so every frame is still decoded once, to the same pixels); 0: one
    # per core, 1: one pass in this process. Files shorter than a minute use one pass.
    workers: int = 0

    def __post_init__(self) -> None:
        FrameFormat(self.max_side, self.jpeg_quality)  # validates both
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0, got {self.decode_threads}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    @property
    def frame_format(self) -> FrameFormat:
        """The contract's frame format: how each kept frame is resized and encoded."""
        return FrameFormat(self.max_side, self.jpeg_quality)


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

    Non-reference pictures that are not kept are not decoded (:mod:`training.data.pictures`);
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
    p = check_file(path)
    with open_video(p) as container:
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
        self.format = options.frame_format
        self.stream = video_stream(container, path)
        fps = stream_fps(self.stream)
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
        workers = workers_for(self.container, self.stream, self.period, self.options.workers)
        if skip_disposable:
            plan, why_not = plan_skipping(self.path, self.stream, self.spec, whole=workers > 1)
        self.stats.skipping = plan is not None and plan.skips
        self.stats.why_not_skipping = why_not
        ranges = split_ranges(self.path, self.stream.index, plan, self.format, workers)
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
                sar = self.stream.codec_context.sample_aspect_ratio
                self.jpegs.append(encode_frame(frame, self.format, sar))
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

    def _run_ranges(
        self, plan: SkipPlan, ranges: list[Range], workers: int
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
        results = decode_ranges(self.path, ranges, workers)
        with closing(results):  # stopping early shuts the processes down
            for job, result in zip(ranges, results, strict=True):
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

    def _decode(self, plan: SkipPlan | None) -> Iterator[VideoFrame]:
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

    def _offer_in_order(self, frame: VideoFrame, plan: SkipPlan) -> float | None:
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

    def _pass(self, plan: SkipPlan) -> None:
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
