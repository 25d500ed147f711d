"""What the live benchmarks share on the server side: an instrumented ``LiveServer``, a
paused model, client processes, a CPU monitor, statistics and the markdown table.

Nothing here edits the server: :class:`BenchServer` subclasses ``LiveServer`` and builds
:class:`InstrumentedAssistant` (a ``LiveAssistant`` that notes, per frame, the wall time it
reached the session loop and, per sampled frame, when its conversion finished);
:class:`TimingEngine` wraps an engine and notes when each guidance request started and
ended; a wrapped ``emit`` notes when each ``guidance`` left. These lean on two private
names of the server (``LiveServer._assistant`` and ``LiveServer._closed``), which is
what a benchmark may do and a client may not.

The model is *paused* with :class:`PausedScheduler`, a scheduler whose workers never start:
clips are queued as in a live session (a newer clip replaces the waiting one) but never
run, so no model time is spent or counted; :class:`PausedEngine` fails loudly if it is
called anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from _media import VIDEO_CLOCK

from lavia_live.config.settings import Settings
from lavia_live.contract.clip import EncodedFrame
from lavia_live.contract.prompt import Prompt
from lavia_live.contract.tasks import TaskContext
from lavia_live.engines.base import Engine, GenerationOptions
from lavia_live.server.app import LiveServer
from lavia_live.server.assistant import LiveAssistant
from lavia_live.server.protocol import GuidanceEvent, ServerEvent
from lavia_live.server.scheduler import Scheduler
from lavia_live.server.session import Session

log = logging.getLogger(__name__)

PEER_SCRIPT = Path(__file__).resolve().parent / "_peer.py"


# --------------------------------------------------------------------------- paused model


class PausedEngine:
    """An engine that must never be asked (the benchmark measures ingest only)."""

    name = "paused"
    max_concurrency = 1

    def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        raise RuntimeError("the model is paused in this benchmark; nothing may call it")

    async def aclose(self) -> None:
        return None


class PausedScheduler(Scheduler):
    """Queues clips as usual but never starts its workers: no request ever runs."""

    def start(self) -> None:
        return None


# --------------------------------------------------------------------------- instrumentation


@dataclass
class SampledRecord:
    """One sampled frame of a session and what became of its clip (wall times, seconds)."""

    pts: int
    t: float  # session clock (the clip's ``clip_end`` when it is the last frame)
    received: float  # reached the session loop (decoded)
    ready: float  # converted and in the clip buffer: the clip is ready
    jpeg: bytes  # kept so that ``id(jpeg)`` identifies it while this record lives
    submitted: bool = False
    started: float | None = None  # the engine began this clip
    finished: float | None = None
    emitted: float | None = None  # the guidance it triggered left the server


@dataclass
class SessionLog:
    sid: str
    record_frames: bool
    frames: list[tuple[int, float]] = field(default_factory=list)  # (pts, received)
    sampled: list[SampledRecord] = field(default_factory=list)
    guidance: list[tuple[float, GuidanceEvent]] = field(default_factory=list)
    final: dict[str, int] | None = None  # counters when the session closed

    def counters(self, assistant: LiveAssistant) -> dict[str, int]:
        return {
            "received": assistant.frames_received,
            "sampled": assistant.frames_sampled,
            "dropped": assistant.frames_dropped,
        }


_BY_JPEG: dict[int, SampledRecord] = {}  # id(jpeg) -> record, for TimingEngine


class InstrumentedAssistant(LiveAssistant):
    def __init__(self, *args: Any, bench_log: SessionLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bench_log = bench_log
        inner = self.emit

        def emit(event: ServerEvent) -> None:
            if isinstance(event, GuidanceEvent):
                bench_log.guidance.append((time.time(), event))
                for rec in reversed(bench_log.sampled):
                    if round(rec.t, 3) == event.clip_end:
                        rec.emitted = time.time()
                        break
            inner(event)

        self.emit = emit

    async def offer_frame(self, frame: av.VideoFrame) -> asyncio.Future[bool] | None:
        received = time.time()
        if self.bench_log.record_frames:
            self.bench_log.frames.append((frame.pts, received))
        sampled = self.frames_sampled
        request = await super().offer_frame(frame)
        if self.frames_sampled != sampled:
            last: EncodedFrame = self.buffer.snapshot().frames[-1]
            rec = SampledRecord(frame.pts, last.timestamp, received, time.time(), last.jpeg)
            rec.submitted = request is not None
            self.bench_log.sampled.append(rec)
            _BY_JPEG[id(last.jpeg)] = rec
        return request


class TimingEngine:
    """``inner`` with the start and end of each guidance request noted on its clip."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_concurrency = inner.max_concurrency

    async def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        rec = _BY_JPEG.get(id(frames_jpeg[-1])) if frames_jpeg else None
        started = time.time()
        async for piece in self.inner.stream(prompt, frames_jpeg, options):
            yield piece
        if rec is not None and prompt.kind == "guidance":
            rec.started, rec.finished = started, time.time()

    async def aclose(self) -> None:
        await self.inner.aclose()


class BenchServer(LiveServer):
    """A ``LiveServer`` whose sessions are instrumented; ``paused``: the model never runs."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        frame_max_side: int,
        paused: bool,
        record_frames: bool = False,
    ) -> None:
        super().__init__(settings, engine, frame_max_side=frame_max_side)
        if paused:
            self.scheduler = PausedScheduler(self.scheduler.concurrency)
        self.record_frames = record_frames
        self.logs: dict[str, SessionLog] = {}

    def _assistant(self, session: Session, task: TaskContext) -> LiveAssistant:
        bench_log = self.logs.setdefault(session.sid, SessionLog(session.sid, self.record_frames))
        return InstrumentedAssistant(
            session.sid,
            task,
            settings=self.settings,
            options=self.options,
            engine=self.engine,
            scheduler=self.scheduler,
            executor=self._executor,
            emit=session.send,
            metrics=self.metrics,
            bench_log=bench_log,
        )

    def _closed(self, session: Session) -> None:
        bench_log = self.logs.get(session.sid)
        if bench_log is not None and bench_log.final is None:
            bench_log.final = bench_log.counters(session.assistant)
        super()._closed(session)

    def frames_received(self) -> int:
        """Frames received by all sessions so far (closed ones included)."""
        total = 0
        for sid, bench_log in self.logs.items():
            session = self.sessions.get(sid)
            if session is not None:
                total += session.assistant.frames_received
            elif bench_log.final is not None:
                total += bench_log.final["received"]
        return total


async def wait_closed(server: BenchServer, timeout_s: float) -> None:
    """Wait until the server has noticed that every peer left; sessions still open after
    ``timeout_s`` get their counters noted as they are (and are closed by ``stop``)."""
    try:
        async with asyncio.timeout(timeout_s):
            while server.sessions:
                await asyncio.sleep(0.1)
    except TimeoutError:
        log.warning(
            "%d sessions still open %g s after their peers left", len(server.sessions), timeout_s
        )
        for sid, session in server.sessions.items():
            bench_log = server.logs.get(sid)
            if bench_log is not None and bench_log.final is None:
                bench_log.final = bench_log.counters(session.assistant)


def bench_settings(max_sessions: int = 64) -> Settings:
    return Settings.model_validate({"serve": {"max_sessions": max_sessions}})


@contextlib.asynccontextmanager
async def running(server: LiveServer) -> AsyncIterator[LiveServer]:
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()
        await server.engine.aclose()
        _BY_JPEG.clear()


# --------------------------------------------------------------------------- client processes


@dataclass
class PeerResult:
    sid: str | None
    fps: int
    sent: list[float]  # wall time of each frame handed to the sender
    events: list[tuple[float, dict[str, Any]]]
    error: str | None

    def send_time(self, pts: int) -> float | None:
        index = round(pts * self.fps / VIDEO_CLOCK)
        return self.sent[index] if 0 <= index < len(self.sent) else None

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e.get("type") == kind]


@dataclass
class ClientRun:
    peers: list[PeerResult]
    cpu_s: float  # user + system CPU of the client processes


async def run_clients(
    url: str,
    stream_path: Path,
    *,
    sessions: int,
    peers_per_process: int,
    seconds: float,
    linger_s: float = 2.0,
    stagger_s: float = 0.05,
    timeout_s: float,
) -> ClientRun:
    """``sessions`` peers in ``ceil(sessions / peers_per_process)`` client processes; waits
    for all of them (killed after ``timeout_s``) and returns what each peer saw."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="lavia-bench-") as tmp:
        procs: list[tuple[asyncio.subprocess.Process, Path]] = []
        try:
            left = sessions
            while left > 0:
                n = min(peers_per_process, left)
                left -= n
                out = Path(tmp) / f"peers{len(procs)}.json"
                cmd = [
                    sys.executable,
                    str(PEER_SCRIPT),
                    *("--url", url, "--stream", str(stream_path), "--peers", str(n)),
                    *("--seconds", str(seconds), "--linger", str(linger_s)),
                    *("--stagger", str(stagger_s * math.ceil(sessions / peers_per_process))),
                    *("--out", str(out)),
                ]
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdout=asyncio.subprocess.DEVNULL, env=dict(os.environ)
                )
                procs.append((proc, out))
                await asyncio.sleep(stagger_s)
            for proc, _ in procs:
                await asyncio.wait_for(proc.wait(), timeout_s)
        finally:
            for proc, _ in procs:
                if proc.returncode is None:
                    log.warning("killing client process %d", proc.pid)
                    proc.kill()
                    await proc.wait()
        peers: list[PeerResult] = []
        for proc, out in procs:
            if proc.returncode != 0 or not out.is_file():
                raise RuntimeError(f"client process {proc.pid} failed (status {proc.returncode})")
            for p in json.loads(out.read_text())["peers"]:
                events = [(float(t), e) for t, e in p["events"]]
                peers.append(PeerResult(p["sid"], p["fps"], p["sent"], events, p["error"]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ClientRun(peers, cpu)


# --------------------------------------------------------------------------- CPU monitor


@dataclass
class CpuSample:
    wall: float  # time.time()
    cpu: float  # this process's CPU seconds, all threads
    frames: int  # frames received by all sessions


class CpuMonitor:
    """Samples this process's CPU time and the frames received, every ``interval_s``."""

    def __init__(self, server: BenchServer, interval_s: float = 0.1) -> None:
        self.server = server
        self.interval_s = interval_s
        self.samples: list[CpuSample] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CpuMonitor:
        self._task = asyncio.create_task(self._run(), name="bench-cpu-monitor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    def sample(self) -> None:
        self.samples.append(
            CpuSample(time.time(), time.process_time(), self.server.frames_received())
        )

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def window(self, start: float, end: float) -> tuple[float, float, int] | None:
        """(wall seconds, CPU seconds, frames) between the samples nearest inside
        [start, end]; None when fewer than two samples fall there."""
        inside = [s for s in self.samples if start <= s.wall <= end]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        return b.wall - a.wall, b.cpu - a.cpu, b.frames - a.frames


def steady_window(server: BenchServer, sessions: int, fps: int) -> tuple[float, float] | None:
    """Wall-time span during which all ``sessions`` were receiving video: from when the
    last one had its first second of frames to when the first one received its last frame
    (with half a second trimmed at the end)."""
    logs = [lg for lg in server.logs.values() if lg.frames]
    if len(logs) < sessions:
        return None
    start = max(lg.frames[min(fps, len(lg.frames) - 1)][1] for lg in logs)
    end = min(lg.frames[-1][1] for lg in logs) - 0.5
    return (start, end) if end - start >= 1.0 else None


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (NaN with fewer than two points)."""
    if len(xs) < 2:
        return math.nan
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else math.nan


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{unit}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    """The machine, and its load: these machines are shared, and the numbers move with it."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, PyAV {av.__version__}; "
        f"load average at the end {load}"
    )


def add_video_options(parser: argparse.ArgumentParser, videos: int) -> None:
    """The options of the benchmarks that stream rendered demo videos in real time."""
    parser.add_argument("--videos", type=int, default=videos, help="demo videos, one after another")
    parser.add_argument("--fps", type=int, default=5, help="capture rate (client default: 5)")
    parser.add_argument("--kbps", type=int, default=1000, help="VP8 bitrate of the streams")
    parser.add_argument("--seed", type=int, default=101, help="seed of the first demo video")


def run_benchmark(
    parser: argparse.ArgumentParser,
    main_async: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """What every live benchmark's ``main`` does after declaring its options: ``-v`` for
    progress logs, the run, and how long it took."""
    parser.add_argument("-v", "--verbose", action="store_true", help="progress logs")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    started = time.perf_counter()
    asyncio.run(main_async(args))
    log.info("done in %.0f s", time.perf_counter() - started)
