"""Latency of live guidance with the embedded model: per stage, and per step change.

    python benchmarks/live_latency.py [--videos 3] [--fps 5] [--sessions 1] [--kbps 1000]
                                      [--seed 101]

A real ``lavia serve`` (``LiveServer``, embedded engine, one torch thread, as ``lavia
serve`` runs it) in this process; an aiortc client in a subprocess streams rendered demo
videos (640x480 at ``--fps``, the browser client's default 5 fps; no mistakes; VP8 made
once by aiortc's encoder and sent as is) over loopback in real time, one video after the
other (``--sessions`` peers at once, all streaming the same video, to see queueing under
load). Client and server share this machine's clock (``time.time()``).

Stages of each guidance request (p50/p95 over all requests or frames):

- transport: the client hands a frame to its RTP sender → the server's session loop gets
  it decoded (RTP, SRTP, aiortc's jitter buffer, which releases a frame only when the next
  one starts arriving, so one frame interval is always in here, and the decoder thread);
- conversion: → that sampled frame is resized and JPEG-encoded into the clip (clip ready);
- queueing: clip ready → the engine starts on it (waiting for the request in flight);
- model: the engine's time, first to last token (what ``guidance.latency_ms`` reports);
- tracking: last token → ``guidance`` sent (parsing, the step tracker); only requests
  that announce something;
- delivery: ``guidance`` sent → the client has it (data channel);
- capture → guidance: the client hands the clip's last frame to its sender → it receives
  the ``guidance`` that clip triggered.

Step-change latency: from the frame where a step starts (ground truth) leaving the client
to the first ``guidance`` naming that step as current arriving there; median over the steps
of each video (the first step is listed apart: it also waits for the first clip).

The per-stage times come from subclasses and wrappers in ``_server.py`` (the assistant's
``offer_frame`` and ``emit``, a timing engine), not from server hooks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, field

from _loopback import use_loopback_only_ice
from _media import DEMO_TASK, demo_video, vp8_stream
from _server import (
    BenchServer,
    PeerResult,
    SessionLog,
    TimingEngine,
    add_video_options,
    bench_settings,
    fmt,
    machine,
    median,
    percentile,
    run_benchmark,
    run_clients,
    running,
    table,
    wait_closed,
)

from lavia_live.contract.frames import FrameFormat, encode_frame
from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import Engine, GenerationOptions, complete
from lavia_live.engines.factory import frame_max_side, open_engine

log = logging.getLogger("live_latency")

CLOSE_WAIT_S = 20.0


@dataclass
class Stages:
    transport: list[float] = field(default_factory=list)
    conversion: list[float] = field(default_factory=list)
    queueing: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    tracking: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    clips: int = 0
    answered: int = 0


@dataclass
class StepChange:
    video: str
    steps: int
    named: int
    latencies: list[float]  # steps after the first, seconds
    first: float | None  # the first step's


async def warm_up(engine: Engine) -> None:
    """One request before measuring (the first one pays for lazy initialisation)."""
    import av

    frame = av.VideoFrame(640, 480, "yuv420p")
    jpeg = encode_frame(frame, FrameFormat(frame_max_side("embedded")))
    task = TaskLibrary.load().require(DEMO_TASK)
    prompt = build_guidance_prompt(task, 4)
    await asyncio.wait_for(complete(engine, prompt, [jpeg] * 4, GenerationOptions(96)), 120)


def add_session(stages: Stages, peer: PeerResult, bench_log: SessionLog) -> None:
    for pts, at in bench_log.frames:
        sent = peer.send_time(pts)
        if sent is not None:
            stages.transport.append(at - sent)
    for rec in bench_log.sampled:
        stages.conversion.append(rec.ready - rec.received)
        if rec.submitted:
            stages.clips += 1
        if rec.started is None or rec.finished is None:
            continue
        stages.answered += 1
        stages.queueing.append(rec.started - rec.ready)
        stages.model.append(rec.finished - rec.started)
        if rec.emitted is not None:
            stages.tracking.append(rec.emitted - rec.finished)
    received = peer.of("guidance")
    if len(received) != len(bench_log.guidance):
        log.warning("%d guidance sent, %d received", len(bench_log.guidance), len(received))
    by_end = {round(rec.t, 3): rec for rec in bench_log.sampled}
    for (emitted, event), (arrived, _) in zip(bench_log.guidance, received, strict=False):
        stages.delivery.append(arrived - emitted)
        rec = by_end.get(event.clip_end)
        sent = peer.send_time(rec.pts) if rec is not None else None
        if sent is not None:
            stages.end_to_end.append(arrived - sent)


def step_change(name: str, peer: PeerResult, starts: dict[int, int]) -> StepChange:
    first_named: dict[int, float] = {}
    for arrived, event in peer.of("guidance"):
        index = event.get("current_index")
        if isinstance(index, int):
            first_named.setdefault(index, arrived)
    later: list[float] = []
    first: float | None = None
    for step, frame in sorted(starts.items()):
        if step not in first_named or frame >= len(peer.sent):
            continue
        latency = first_named[step] - peer.sent[frame]
        if step == min(starts):
            first = latency
        else:
            later.append(latency)
    named = sum(1 for s in starts if s in first_named)
    return StepChange(name, len(starts), named, later, first)


async def main_async(args: argparse.Namespace) -> None:
    use_loopback_only_ice()
    videos = [
        demo_video(args.seed + i, width=640, height=480, fps=args.fps) for i in range(args.videos)
    ]
    streams = [vp8_stream(v, args.kbps) for v in videos]
    engine = TimingEngine(await asyncio.to_thread(open_engine, "embedded", cpu_threads=1))
    await warm_up(engine)
    server = BenchServer(
        bench_settings(),
        engine,
        frame_max_side=frame_max_side("embedded"),
        paused=False,
        record_frames=True,
    )
    stages = Stages()
    changes: list[StepChange] = []
    async with running(server):
        for video, stream in zip(videos, streams, strict=True):
            log.info("streaming %s (%.0f s)", video.path.name, len(stream) / stream.fps)
            clients = await run_clients(
                server.url,
                stream.path,
                sessions=args.sessions,
                peers_per_process=args.sessions,
                seconds=0,
                linger_s=4.0,
                timeout_s=len(stream) / stream.fps + 120,
            )
            await wait_closed(server, CLOSE_WAIT_S)
            for peer in clients.peers:
                bench_log = server.logs.get(peer.sid or "")
                if peer.error or bench_log is None:
                    log.warning("peer failed: %s", peer.error)
                    continue
                add_session(stages, peer, bench_log)
                changes.append(step_change(video.path.stem, peer, video.step_starts()))

    def row(name: str, span: str, values: list[float], n: int | None = None) -> list[str]:
        ms = [v * 1000 for v in values]
        return [
            name,
            span,
            str(n if n is not None else len(ms)),
            fmt(percentile(ms, 50), 0),
            fmt(percentile(ms, 95), 0),
        ]

    rows = [
        [
            "client VP8 encode",
            "(aiortc's encoder, when the stream was made; not in the rows below)",
            str(len(streams[0])),
            fmt(streams[0].encode_ms_p50, 0),
            "-",
        ],
        row(
            "transport",
            "frame handed to the sender → session loop has it decoded",
            stages.transport,
        ),
        row("conversion", "→ resized + JPEG in the clip (clip ready)", stages.conversion),
        row("queueing", "clip ready → engine starts on it", stages.queueing),
        row("model", "engine start → last token", stages.model),
        row("tracking", "last token → guidance sent (parse, step tracker)", stages.tracking),
        row("delivery", "guidance sent → client has it", stages.delivery),
        row(
            "capture → guidance",
            "clip's last frame handed to the sender → its guidance at the client",
            stages.end_to_end,
        ),
    ]
    print(
        f"## Live guidance latency: embedded model (1 torch thread), 640x480 at {args.fps} fps, "
        f"{args.sessions} session(s) at once, {len(videos)} demo videos\n"
    )
    print(table(["stage", "span", "n", "p50 ms", "p95 ms"], rows))
    skipped = stages.clips - stages.answered
    print(
        f"\n{stages.answered} of {stages.clips} clips went to the model; {skipped} were "
        "replaced by a newer clip while waiting (the scheduler keeps only the latest)."
    )
    change_rows = [
        [
            c.video,
            f"{c.named}/{c.steps}",
            fmt(median(c.latencies), 1),
            fmt(max(c.latencies) if c.latencies else None, 1),
            fmt(c.first, 1),
        ]
        for c in changes
    ]
    every = [x for c in changes for x in c.latencies]
    per_video = [median(c.latencies) for c in changes if c.latencies]
    change_rows.append(
        [
            "**all videos**",
            f"{sum(c.named for c in changes)}/{sum(c.steps for c in changes)}",
            f"{fmt(median(per_video), 1)} (median of medians; of all steps "
            f"{fmt(median(every), 1)})",
            fmt(max(every) if every else None, 1),
            fmt(median([c.first for c in changes if c.first is not None]), 1),
        ]
    )
    print(
        "\n### Step-change latency (s): a step's first frame leaves the client → the first "
        "guidance naming it as current arrives\n"
    )
    headers = ["video", "steps named", "median (later steps)", "max", "first step"]
    print(table(headers, change_rows))
    print(
        f"\n{machine()}. Settings: the defaults (sampling 1 frame/s, first guidance after "
        f"{server.settings.sampling.min_frames_for_guidance} sampled frames, a new step "
        f"announced after {server.settings.serve.confirm_answers} answers in a row)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_video_options(parser, videos=3)
    parser.add_argument("--sessions", type=int, default=1, help="peers streaming at once")
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
