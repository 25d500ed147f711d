"""Ranges in parallel: a long file's packets, split at IDR pictures, decoded by processes.

A file of a minute or more with two or more IDR pictures is decoded by worker processes
(one per core by default, ``ExtractOptions.workers``), each taking a range of packets that
starts at an IDR picture: a decoder needs nothing from before an IDR picture, so each frame
is still decoded once, to the same pixels; each range skips its own unkept non-reference
pictures and stops once its last kept frame is out. The sampler runs once, in the calling
process, over the scan's presentation order (:class:`SkipPlan`), so the frames kept, their
times and the clips are exactly those of one pass. A range whose kept frames do not all
come out is decoded again in the calling process, every picture; a worker that dies has
its range decoded there too. Open-GOP streams whose only IDR picture is the first
(recovery points at CRA or I pictures) are decoded in one pass.
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import os
from array import array
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import av
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from lavia_live.contract.frames import FrameFormat, encode_frame
from lavia_live.errors import MediaError
from training.data.pictures import SkipPlan
from training.data.video import open_video

logger = logging.getLogger(__name__)

# Files with fewer frames are decoded in one pass: starting processes would cost more.
_RANGES_MIN_FRAMES = 1800
# Ranges per worker process: enough to even out the load, few enough to seek rarely.
_RANGES_PER_WORKER = 8
# At most this many packets a range (5 minutes at 30 fps), unless IDR pictures are rarer.
_RANGE_MAX_PACKETS = 9000


def workers_for(container: InputContainer, stream: VideoStream, period: float, workers: int) -> int:
    """Processes for decoding ranges (``workers``, 0: one per core): 1 unless the file is
    long enough to pay for them. ``period``: seconds between frames at the nominal rate."""
    workers = workers or len(os.sched_getaffinity(0))
    frames = stream.frames
    if not frames:  # e.g. Matroska: from the duration
        duration = container.duration
        if stream.duration is not None and stream.time_base is not None:
            frames = round(float(stream.duration * stream.time_base) / period)
        elif duration is not None:
            frames = round(duration / av.time_base / period)
    return workers if frames >= _RANGES_MIN_FRAMES else 1


@dataclass(frozen=True)
class Range:
    """Packets ``[start_pts, stop_pts)`` of one stream, in decode order, for one process."""

    path: str
    stream_index: int
    start_pts: int  # an IDR picture's packet
    stop_pts: int | None  # the next range's first packet (None: to the end)
    packets: int
    plan: SkipPlan  # ``keep``: this range's kept frames only; no order arrays
    frame_format: FrameFormat


@dataclass
class RangeResult:
    jpegs: dict[int, bytes] = field(default_factory=dict)  # pts -> JPEG of each kept frame
    packets: int = 0
    packets_decoded: int = 0
    frames_decoded: int = 0
    error: str | None = None


def split_ranges(
    path: Path, stream_index: int, plan: SkipPlan | None, fmt: FrameFormat, workers: int
) -> list[Range]:
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
        ranges.append(Range(str(path), stream_index, order[a], stop, b - a, light, fmt))
    return ranges


def decode_ranges(
    path: Path, ranges: list[Range], workers: int
) -> Generator[RangeResult, None, None]:
    """Decode ``ranges`` in ``workers`` processes; yield their results in order, each with
    every kept frame or an error. A few ranges are in flight at a time, so memory stays
    bounded on long files. Close the generator to stop: the processes are shut down."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(job: Range) -> Future[RangeResult] | None:
        try:
            return pool.submit(_decode_range, job)
        except BrokenProcessPool:  # a worker died: the rest is decoded here
            return None

    try:
        ahead = [submit(r) for r in ranges[: 2 * workers]]
        for k, job in enumerate(ranges):
            future = ahead.pop(0)
            if k + len(ahead) + 1 < len(ranges):
                ahead.append(submit(ranges[k + len(ahead) + 1]))
            result = None
            try:
                result = future.result() if future is not None else None
            except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                logger.warning("%s: decoding process lost (%s); decoding here", path, exc)
            if result is None:
                result = _decode_range(job)
            if result.error is None and not job.plan.keep <= result.jpegs.keys():
                # A kept frame did not come out (irregular stream): decode the range again
                # here, every picture, as one pass would.
                result = _decode_range(replace(job, plan=replace(job.plan, skips=False)))
                if result.error is None and not job.plan.keep <= result.jpegs.keys():
                    result.error = "kept frames missing from the decoder"
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_range(job: Range) -> RangeResult:
    """Decode one range (in a worker process): the JPEGs of its kept frames and counts."""
    result = RangeResult()
    # Seek to the range's IDR picture; if the seek went past it, read from the top.
    attempts = (True, False) if job.start_pts != 0 else (False,)
    try:
        for seek in attempts:
            with open_video(Path(job.path)) as container:
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
    container: InputContainer, stream: VideoStream, job: Range, result: RangeResult
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
                    sar = stream.codec_context.sample_aspect_ratio
                    result.jpegs[frame.pts] = encode_frame(frame, job.frame_format, sar)

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
