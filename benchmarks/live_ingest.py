"""Ingest CPU of one live session at 640x480 30 fps, as a ratio to bare PyAV decoding.

    python benchmarks/live_ingest.py [--seconds 20] [--repeat 9] [--kbps 1000]
                                     [--content demo,camera] [--seed 1]

The streams (640x480, 30 fps, encoded once by aiortc's own VP8 encoder, aiortc's default
codec, and cached): ``demo``, a rendered demo-task video (flat-shaded cartoon: cheap to
decode, so the ratio is at its least flattering), and ``camera``, camera-like content
(textured scene panning, textured objects moving; costlier to decode, like a real camera).
Every method takes the same first ``--seconds`` of a stream. CPU is this process's CPU
time (all threads: ``time.process_time``).

- ``bare decode``: PyAV's ``libvpx`` decoder, created as aiortc's ``Vp8Decoder`` creates it,
  decodes every frame (1/90000 s pts, as RTP gives them) and drops it. The floor.
- ``ingest``: the same decode, every frame handed to ``LiveAssistant.offer_frame`` as a
  session does (timestamp sampler, one frame a second converted by the contract's
  ``encode_frame`` in the server's two-thread pool, rolling clip buffer, clip queued with
  the scheduler). The model is paused: the scheduler's workers are never started, so a
  queued clip never runs (a newer one replaces it) and no model time is counted. Run at
  the embedded engine's frame size (160 px) and at the 448 px that API engines get.
  ``--repeat`` rounds, interleaved; each method keeps its fastest round.
- ``aiortc session``: a real ``lavia serve`` (same paused model) in this process and one
  aiortc client in a subprocess that sends the same VP8 frames (pre-encoded, so the client
  costs nothing to measure here) over loopback at 30 fps in real time. The server process's
  CPU per received frame over the steady part of the stream (all of RTP/SRTP, the jitter
  buffer, aiortc's decoder thread, the session loop, ``state`` events), against bare decode.
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import av
from _loopback import use_loopback_only_ice
from _media import DEMO_TASK, Vp8Stream, stream_for
from _server import (
    BenchServer,
    CpuMonitor,
    PausedEngine,
    PausedScheduler,
    bench_settings,
    fmt,
    machine,
    median,
    run_benchmark,
    run_clients,
    running,
    steady_window,
    table,
)

from lavia_live.config.settings import Settings
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.factory import DEFAULT_FRAME_MAX_SIDE, frame_max_side
from lavia_live.server.assistant import LiveAssistant, LoopOptions

log = logging.getLogger("live_ingest")

TARGET = 1.3
NOTES = """
Offline rows: {repeat} interleaved rounds. 'best rounds' compares each method's fastest
round (load from other processes only ever slows a round down); 'median pair' is the median
of each round's ratio to that round's bare decode. Model paused (clips queued, never run).
Session rows: the server process's CPU per received frame over the steady part of a
real-time loopback session (RTP, SRTP, jitter buffer, decoder thread, session loop, state
events). The client is another process sending the same pre-encoded frames (a live client
also pays aiortc's VP8 encoding; the server does not)."""


def bare_decode(stream: Vp8Stream, count: int) -> float:
    """CPU seconds to decode ``count`` frames and drop them."""
    codec = av.CodecContext.create("libvpx", "r")
    started = time.process_time()
    for packet in stream.packets(count):
        codec.decode(packet)
    return time.process_time() - started


async def ingest(
    stream: Vp8Stream, count: int, max_side: int, executor: ThreadPoolExecutor
) -> float:
    """CPU seconds to decode ``count`` frames and pass each through a session's loop."""
    settings = Settings()
    task = TaskLibrary.load().require(DEMO_TASK)
    scheduler = PausedScheduler()
    assistant = LiveAssistant(
        "bench",
        task,
        settings=settings,
        options=LoopOptions.of(settings, max_side),
        engine=PausedEngine(),
        scheduler=scheduler,
        executor=executor,
        emit=lambda event: None,
    )
    codec = av.CodecContext.create("libvpx", "r")
    try:
        started = time.process_time()
        for packet in stream.packets(count):
            for frame in codec.decode(packet):
                await assistant.offer_frame(frame)
        cpu = time.process_time() - started
    finally:
        await scheduler.aclose()
    expected = (count - 1) // stream.fps + 1
    if assistant.frames_sampled != expected or assistant.frames_dropped:
        raise RuntimeError(
            f"sampled {assistant.frames_sampled} (expected {expected}), "
            f"dropped {assistant.frames_dropped}"
        )
    return cpu


async def session(stream: Vp8Stream, seconds: float) -> tuple[float, int, int, float]:
    """(server CPU seconds, frames) over the steady window of one loopback session, frames
    sent by the client, and the client's CPU seconds."""
    use_loopback_only_ice()
    engine = PausedEngine()
    server = BenchServer(
        bench_settings(),
        engine,
        frame_max_side=frame_max_side("embedded"),
        paused=True,
        record_frames=True,
    )
    async with running(server), CpuMonitor(server) as monitor:
        clients = await run_clients(
            server.url,
            stream.path,
            sessions=1,
            peers_per_process=1,
            seconds=seconds,
            timeout_s=seconds + 120,
        )
        monitor.sample()
    peer = clients.peers[0]
    if peer.error:
        raise RuntimeError(f"the client failed: {peer.error}")
    span = steady_window(server, 1, stream.fps)
    measured = monitor.window(*span) if span else None
    if measured is None:
        raise RuntimeError("no steady window: the session received too few frames")
    _, cpu, frames = measured
    return cpu, frames, len(peer.sent), clients.cpu_s


async def measure(
    content: str, args: argparse.Namespace, executor: ThreadPoolExecutor
) -> list[list[str]]:
    stream = stream_for(content, 30, args.kbps, args.seed)
    count = min(len(stream), round(args.seconds * stream.fps))
    embedded_side = frame_max_side("embedded")
    methods = {
        "bare": "bare PyAV decode (libvpx, as aiortc's decoder)",
        "small": f"decode + LiveAssistant.offer_frame, {embedded_side} px frames (embedded)",
        "large": f"decode + LiveAssistant.offer_frame, {DEFAULT_FRAME_MAX_SIDE} px frames (API)",
    }
    rounds: dict[str, list[float]] = {key: [] for key in methods}
    order = list(methods)
    for round_ in range(args.repeat):
        for key in order[round_ % 3 :] + order[: round_ % 3]:  # rotated: no fixed position
            if key == "bare":
                cpu = bare_decode(stream, count)
            else:
                side = embedded_side if key == "small" else DEFAULT_FRAME_MAX_SIDE
                cpu = await ingest(stream, count, side, executor)
            log.info("%s round %d %s: %.3f s CPU", content, round_ + 1, key, cpu)
            rounds[key].append(cpu)
    log.info("%s: streaming %d s over loopback", content, count // stream.fps)
    s_cpu, s_frames, sent, client_cpu = await session(stream, count / stream.fps)

    label = f"{content} ({count} frames, {stream.kbps} kbps)"
    bare_per_frame = min(rounds["bare"]) / count
    rows = []
    for key, name in methods.items():
        per_frame = min(rounds[key]) / count
        ratio = per_frame / bare_per_frame
        paired = median([c / b for c, b in zip(rounds[key], rounds["bare"], strict=True)])
        target = "" if key == "bare" else f"<= {TARGET}x {'yes' if ratio <= TARGET else 'NO'}"
        rows.append(
            [
                label,
                name,
                fmt(per_frame * stream.fps * 1000),
                fmt(per_frame * 1000, 2),
                f"{ratio:.2f}x",
                f"{paired:.2f}x",
                target,
            ]
        )
    per_frame = s_cpu / s_frames
    rows.append(
        [
            label,
            f"aiortc loopback session, server process ({s_frames} of {sent} frames sent)",
            fmt(per_frame * stream.fps * 1000),
            fmt(per_frame * 1000, 2),
            f"{per_frame / bare_per_frame:.2f}x",
            "",
            f"own row; client {client_cpu:.1f} s CPU",
        ]
    )
    return rows


async def main_async(args: argparse.Namespace) -> None:
    rows: list[list[str]] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-frames") as executor:
        for content in args.content.split(","):
            rows += await measure(content.strip(), args, executor)
    print("## Live ingest CPU per session: 640x480 30 fps VP8 (aiortc's encoder)\n")
    headers = [
        "content",
        "path",
        "CPU ms / video s",
        "CPU ms / frame",
        "vs bare (best rounds)",
        "vs bare (median pair)",
        "target",
    ]
    print(table(headers, rows))
    print(f"\n{machine()}.")
    print(NOTES.format(repeat=args.repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="video seconds per method")
    parser.add_argument("--repeat", type=int, default=9, help="rounds of the offline methods")
    parser.add_argument("--kbps", type=int, default=1000, help="VP8 bitrate of the stream")
    parser.add_argument("--seed", type=int, default=1, help="demo video seed")
    parser.add_argument(
        "--content", default="demo,camera", help="streams to measure: demo, camera or both"
    )
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
