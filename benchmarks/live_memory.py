"""Memory of one live session over a simulated hour: it should stay flat.

    python benchmarks/live_memory.py [--minutes 60] [--speed 30] [--engine embedded|paused]
                                     [--every 5]

One ``LiveAssistant`` (the loop a live session runs: sampler, conversion in a two-thread
pool, rolling clip, scheduler, engine, parser, step tracker, events) is fed ``--minutes``
of 640x480 30 fps video at ``--speed`` times real time: decoded frames of a rendered demo
video (one per second of it, each repeated for the 30 frames of its second, with pts
advancing 1/30 s in the 1/90000 s time base aiortc gives), looping over the video. The
engine is the real embedded model (one torch thread), which answers as fast as it can
(slowed by tracemalloc): at 30x most clips are replaced while one is being answered, as
under load; ``--engine paused`` runs the ingest side alone. Events are counted, not kept.

Every ``--every`` simulated minutes, once no model request is in flight (the feed waits)
and after a ``gc.collect()``: the process's RSS (``/proc/self/statm``) and the Python heap
traced by ``tracemalloc`` (started before the session was made, so the model's weights are
not in it). The slope is a least-squares fit
from the first sample after the start (warm-up excluded), and over the second half, in MiB
per simulated hour; the lines whose traced memory grew most from that sample to the last
are listed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import av
from _media import DEMO_TASK, demo_video
from _server import PausedEngine, PausedScheduler, fmt, machine, run_benchmark, slope, table

from lavia_live.config.settings import Settings
from lavia_live.contract.prompt import Prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import Engine, GenerationOptions
from lavia_live.engines.factory import frame_max_side, open_engine
from lavia_live.server.assistant import LiveAssistant, LoopOptions
from lavia_live.server.protocol import ServerEvent
from lavia_live.server.scheduler import Scheduler

log = logging.getLogger("live_memory")

FPS = 30
PTS_STEP = 90_000 // FPS
TIME_BASE = Fraction(1, 90_000)
MIB = 2**20
IDLE_WAIT_S = 120.0  # for the request in flight to end before a sample


class CountingEngine:
    """``inner``, counting the requests that ran to the end."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_concurrency = inner.max_concurrency
        self.requests = 0

    async def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        async for piece in self.inner.stream(prompt, frames_jpeg, options):
            yield piece
        self.requests += 1

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Sample:
    minute: float
    rss_mib: float
    traced_mib: float
    offered: int
    sampled: int
    requests: int
    guidance: int


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE") / MIB


def source_frames(seed: int) -> list[av.VideoFrame]:
    """One decoded 640x480 frame per second of a rendered demo video."""
    video = demo_video(seed, width=640, height=480, fps=FPS)
    frames = []
    with av.open(str(video.path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % FPS == 0:
                frames.append(frame)
    return frames


async def run(args: argparse.Namespace) -> tuple[list[Sample], list[str], str]:
    frames = source_frames(args.seed)
    settings = Settings()
    task = TaskLibrary.load().require(DEMO_TASK)
    engine: CountingEngine | None = None
    if args.engine == "embedded":
        inner = await asyncio.to_thread(open_engine, "embedded", cpu_threads=1)
        engine = CountingEngine(inner)
        scheduler = Scheduler(1)
    else:
        scheduler = PausedScheduler()
    events: Counter[str] = Counter()

    def emit(event: ServerEvent) -> None:
        events[event.type] += 1

    tracemalloc.start()
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-frames")
    scheduler.start()
    assistant = LiveAssistant(
        "memory",
        task,
        settings=settings,
        options=LoopOptions.of(settings, frame_max_side("embedded")),
        engine=engine or PausedEngine(),
        scheduler=scheduler,
        executor=executor,
        emit=emit,
    )
    samples: list[Sample] = []

    async def sample(second: int) -> None:
        # Between requests (the feed waits until none is in flight, so a request's inputs
        # are not counted in one sample and missing from the next).
        async with asyncio.timeout(IDLE_WAIT_S):
            while scheduler.in_flight:
                await asyncio.sleep(0.02)
        gc.collect()
        samples.append(
            Sample(
                second / 60,
                rss_mib(),
                tracemalloc.get_traced_memory()[0] / MIB,
                assistant.frames_received,
                assistant.frames_sampled,
                engine.requests if engine else 0,
                events["guidance"],
            )
        )
        log.info("%s", samples[-1])

    first_snapshot: tracemalloc.Snapshot | None = None
    started = time.monotonic()
    try:
        await sample(0)
        total = round(args.minutes * 60)
        for second in range(total):
            frame = frames[second % len(frames)]
            for k in range(FPS):
                frame.pts = (second * FPS + k) * PTS_STEP
                frame.time_base = TIME_BASE
                await assistant.offer_frame(frame)
            if args.speed > 0:
                ahead = started + (second + 1) / args.speed - time.monotonic()
                await asyncio.sleep(max(0.0, ahead))
            else:
                await asyncio.sleep(0)
            if (second + 1) % round(args.every * 60) == 0:
                await sample(second + 1)
                if first_snapshot is None:
                    first_snapshot = tracemalloc.take_snapshot()
        growth: list[str] = []
        if first_snapshot is not None:
            stats = tracemalloc.take_snapshot().compare_to(first_snapshot, "lineno")
            for stat in stats[:5]:
                where = stat.traceback[0]
                growth.append(
                    f"{where.filename.split('site-packages/')[-1]}:{where.lineno}: "
                    f"{stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks)"
                )
        wall = f"{time.monotonic() - started:.0f} s"
    finally:
        await assistant.close()
        await scheduler.aclose()
        executor.shutdown(wait=True)
        if engine is not None:
            await engine.aclose()
        tracemalloc.stop()
    return samples, growth, wall


async def report(args: argparse.Namespace) -> None:
    """Run, then print the tables."""
    samples, growth, wall = await run(args)

    base = samples[1] if len(samples) > 1 else samples[0]
    rows = [
        [
            fmt(s.minute, 0),
            fmt(s.rss_mib, 1),
            fmt(s.rss_mib - base.rss_mib, 1) if s.minute >= base.minute else "",
            fmt(s.traced_mib, 2),
            s.offered,
            s.sampled,
            s.requests,
            s.guidance,
        ]
        for s in samples
    ]
    fit = samples[1:]
    hours = [s.minute / 60 for s in fit]
    rss_slope = slope(hours, [s.rss_mib for s in fit])
    traced_slope = slope(hours, [s.traced_mib for s in fit])
    half = [s for s in samples if s.minute >= args.minutes / 2]
    half_hours = [s.minute / 60 for s in half]
    rss_half = slope(half_hours, [s.rss_mib for s in half])
    traced_half = slope(half_hours, [s.traced_mib for s in half])
    print(
        f"## Memory of one live session: {args.minutes:g} simulated minutes of 640x480 30 fps, "
        f"engine {args.engine}, {args.speed:g}x real time ({wall})\n"
    )
    headers = [
        "sim. min",
        "RSS MiB",
        f"RSS vs {base.minute:g} min",
        "Python heap MiB",
        "frames in",
        "sampled",
        "model requests",
        "guidance",
    ]
    print(table(headers, rows))
    print()
    print(
        table(
            ["slope (MiB per simulated hour)", "RSS", "Python heap"],
            [
                [f"from {base.minute:g} min", fmt(rss_slope, 2), fmt(traced_slope, 3)],
                [
                    f"second half (from {args.minutes / 2:g} min)",
                    fmt(rss_half, 2),
                    fmt(traced_half, 3),
                ],
            ],
        )
    )
    last = samples[-1]
    requests = last.requests - base.requests
    if requests > 0:
        per_request = (last.traced_mib - base.traced_mib) * MIB / requests
        print(
            f"\nPython heap change per model request, {base.minute:g} min to the end: "
            f"{per_request:+.0f} bytes over {requests} requests; a live session asks at most "
            f"one a second, 3600 an hour: {per_request * 3600 / MIB:+.2f} MiB per real hour "
            "at most from that."
        )
    if growth:
        print(f"\nLargest traced growth, {base.minute:g} min to the end:\n")
        for line in growth:
            print(f"- {line}")
    print(f"\n{machine()}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="simulated video")
    parser.add_argument("--speed", type=float, default=30.0, help="x real time; 0: flat out")
    parser.add_argument("--engine", choices=["embedded", "paused"], default="embedded")
    parser.add_argument("--every", type=float, default=5.0, help="simulated minutes per sample")
    parser.add_argument("--seed", type=int, default=1, help="demo video seed")
    run_benchmark(parser, report)


if __name__ == "__main__":
    main()
