"""Live sessions one server sustains on this machine with the model paused (ingest only).

    python benchmarks/live_sessions.py [--seconds 12] [--fps 5,30] [--max-sessions 32]
                                       [--content camera] [--kbps 1000] [--peers-per-process 4]

One ``lavia serve`` (the real ``LiveServer`` with instrumented sessions) runs in this
process; N aiortc peers in client processes (``--peers-per-process`` each, so the server
process is measured alone) stream 640x480 VP8 at the given rate over loopback for
``--seconds``. The clients send pre-encoded frames (no encoding in the clients), but they
still share this machine's cores with the server.

Model paused: the server's scheduler is replaced by one whose workers never start, so
every session queues its clips exactly as live (a newer clip replaces the waiting one)
but no request ever runs and the engine (:class:`PausedEngine`, which would fail loudly) is
never called. There is no setting for this (``--set`` cannot stop the model), hence the
subclass in ``_server.py``.

A run with N sessions *holds* when every session's ``frames_sampled`` is within one of the
seconds of video its client sent (one sampled frame a second, the first at 0 s),
``frames_dropped`` is 0 and no peer failed. N rises 1, 2, 4, ... until a run fails (or
``--max-sessions``), then bisects to within a quarter; the largest N that held is reported
for each frame rate. 5 fps is what the browser client asks for (``CAPTURE`` in
``lavia_live/server/app.py``); 30 fps is a camera's full rate.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass

from _loopback import use_loopback_only_ice
from _media import Vp8Stream, stream_for
from _server import (
    BenchServer,
    ClientRun,
    CpuMonitor,
    PausedEngine,
    bench_settings,
    fmt,
    machine,
    percentile,
    run_benchmark,
    run_clients,
    running,
    steady_window,
    table,
    wait_closed,
)

from lavia_live.engines.factory import frame_max_side
from lavia_live.server.app import CAPTURE

log = logging.getLogger("live_sessions")

TARGET_AT_CLIENT_DEFAULTS = 8
CLOSE_WAIT_S = 20.0


@dataclass
class Trial:
    fps: int
    sessions: int
    processes: int
    holds: bool
    sampled_ok: int
    dropped: int
    failed_peers: int
    received: int
    sent: int
    server_cores: float | None
    client_cores: float
    lag_p50_ms: float
    lag_p95_ms: float
    load: float  # 1-minute load average of the machine at the end of the run
    why: str


def expected_samples(frames_sent: int, fps: int) -> int:
    """Sampled frames ``frames_sent`` frames at ``fps`` make: one a second from 0 s."""
    return math.floor((frames_sent - 1) / fps + 1e-6) + 1 if frames_sent else 0


async def trial(stream: Vp8Stream, sessions: int, args: argparse.Namespace) -> Trial:
    server = BenchServer(
        bench_settings(max_sessions=max(64, sessions)),
        PausedEngine(),
        frame_max_side=frame_max_side("embedded"),
        paused=True,
        record_frames=True,
    )
    async with running(server), CpuMonitor(server) as monitor:
        started = time.time()
        clients: ClientRun = await run_clients(
            server.url,
            stream.path,
            sessions=sessions,
            peers_per_process=args.peers_per_process,
            seconds=args.seconds,
            timeout_s=args.seconds + 60 + 2 * sessions,
        )
        monitor.sample()
        ended = time.time()
        await wait_closed(server, CLOSE_WAIT_S)
    sampled_ok = dropped = failed = received = sent = 0
    why: list[str] = []
    short: list[tuple[int, int]] = []  # (sampled, expected) of sessions that lost frames
    lags: list[float] = []
    for peer in clients.peers:
        bench_log = server.logs.get(peer.sid or "")
        if peer.error or bench_log is None or bench_log.final is None:
            failed += 1
            why.append(peer.error or "no session")
            continue
        final = bench_log.final
        expected = expected_samples(len(peer.sent), stream.fps)
        received += final["received"]
        sent += len(peer.sent)
        dropped += final["dropped"]
        if abs(final["sampled"] - expected) <= 1 and final["dropped"] == 0:
            sampled_ok += 1
        else:
            short.append((final["sampled"], expected))
        for pts, at in bench_log.frames:
            sent_at = peer.send_time(pts)
            if sent_at is not None:
                lags.append((at - sent_at) * 1000)
    span = steady_window(server, sessions, stream.fps)
    measured = monitor.window(*span) if span else None
    server_cores = measured[1] / measured[0] if measured else None
    wall = max(ended - started, 1e-9)
    holds = failed == 0 and sampled_ok == sessions
    if short:
        lo, hi = min(s for s, _ in short), max(s for s, _ in short)
        got = f"{lo}" if lo == hi else f"{lo}-{hi}"
        why.append(f"{len(short)} sessions sampled {got} of {max(e for _, e in short)}")
    if dropped:
        why.append(f"{dropped} frames dropped")
    return Trial(
        stream.fps,
        sessions,
        math.ceil(sessions / args.peers_per_process),
        holds,
        sampled_ok,
        dropped,
        failed,
        received,
        sent,
        server_cores,
        clients.cpu_s / wall,
        percentile(lags, 50),
        percentile(lags, 95),
        os.getloadavg()[0],
        "; ".join(sorted(set(why))[:3]),
    )


async def search(stream: Vp8Stream, args: argparse.Namespace) -> tuple[int, list[Trial]]:
    """Largest N that holds (0 if even 1 fails), and every trial run."""
    trials: list[Trial] = []
    best, worst = 0, args.max_sessions + 1  # holds at best, fails at worst
    n = 1
    while n <= args.max_sessions:
        log.info("%d fps: %d sessions", stream.fps, n)
        result = await trial(stream, n, args)
        trials.append(result)
        log.info("%d fps, %d sessions: %s", stream.fps, n, "holds" if result.holds else result.why)
        if result.holds:
            best = n
        else:
            worst = n
        if worst > args.max_sessions:  # still doubling
            n = min(n * 2, args.max_sessions) if n < args.max_sessions else n + 1
        elif worst - best <= max(1, best // 4):
            break
        else:
            n = (best + worst) // 2
    return best, trials


async def main_async(args: argparse.Namespace) -> None:
    use_loopback_only_ice()
    results: dict[int, int] = {}
    trials: list[Trial] = []
    for fps in (int(x) for x in args.fps.split(",")):
        stream = stream_for(args.content, fps, args.kbps, args.seed)
        results[fps], found = await search(stream, args)
        trials += found
    rows = [
        [
            f"{t.fps} fps",
            t.sessions,
            t.processes,
            "holds" if t.holds else "FAILS",
            f"{t.sampled_ok}/{t.sessions}",
            t.dropped,
            f"{t.received}/{t.sent}",
            fmt(t.server_cores, 2),
            fmt(t.server_cores / t.sessions * 100 if t.server_cores else None, 1),
            fmt(t.client_cores, 2),
            f"{fmt(t.lag_p50_ms, 0)} / {fmt(t.lag_p95_ms, 0)}",
            fmt(t.load, 1),
            t.why or "",
        ]
        for t in trials
    ]
    print(
        f"## Live sessions on one server, model paused: 640x480 VP8 ({args.content}, "
        f"{args.kbps} kbps), {args.seconds:g} s per session\n"
    )
    headers = [
        "capture",
        "sessions",
        "client procs",
        "result",
        "sampled ok",
        "dropped",
        "frames recv/sent",
        "server cores",
        "% core / session",
        "client cores",
        "send→loop p50/p95 ms",
        "load",
        "why it failed",
    ]
    print(table(headers, rows))
    client_fps = int(CAPTURE["frame_rate"])
    summary = []
    for fps, n in results.items():
        ceiling = n >= args.max_sessions
        shown = f">= {n}" if ceiling else str(n)
        is_default = fps == client_fps
        target = (
            f">= {TARGET_AT_CLIENT_DEFAULTS} {'yes' if n >= TARGET_AT_CLIENT_DEFAULTS else 'NO'}"
            if is_default
            else ""
        )
        what = f"{fps} fps" + (" (the client's default capture)" if is_default else "")
        summary.append([what, shown, target])
    print()
    print(
        table(["capture (640x480)", "sessions sustained, no sampled frame lost", "target"], summary)
    )
    print(
        f"\n{machine()}. The clients run in {max(t.processes for t in trials)} or fewer "
        "separate processes (the server process is measured alone) but share the same cores "
        "as the server; 'server cores' is the server process's CPU over the steady part of a "
        "run (all threads); 'send→loop' is from a client handing a frame to its sender to the "
        "server's session loop receiving it decoded (same clock); 'load' is the machine's "
        "1-minute load average at the end of the run (other processes share these cores: a "
        "load above 2 means this benchmark got less than the whole machine)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="video per session")
    parser.add_argument("--fps", default="5,30", help="capture rates to test")
    parser.add_argument("--max-sessions", type=int, default=32)
    parser.add_argument("--content", default="camera", choices=["camera", "demo"])
    parser.add_argument("--kbps", type=int, default=1000, help="VP8 bitrate of the stream")
    parser.add_argument("--seed", type=int, default=1, help="demo video seed (--content demo)")
    parser.add_argument("--peers-per-process", type=int, default=4)
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
