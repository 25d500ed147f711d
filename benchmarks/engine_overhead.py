"""Engine overhead in a live session: what the server adds around the model's own time.

    python benchmarks/engine_overhead.py [--videos 2] [--fps 5] [--seed 101]

A real ``lavia serve`` (``LiveServer``) in this process whose engine is the OpenAI-compatible
one (``OpenAIEngine``, as for GPT-4o or SGLang), pointed at a real HTTP server on loopback
that speaks the chat-completions wire protocol and answers at once (the tests' fake,
``tests/openai_server.py``; its answers walk through the task's steps, three clips a step,
so the tracker announces regularly). An aiortc client in a subprocess streams rendered demo
videos in real time. Per guidance request, on this machine's one clock:

- request out: the clip is ready (its last frame converted) → the request has arrived at
  the model server (waiting for the session's request in flight, the prompt, the frames as
  data URLs, the HTTP request over loopback);
- model server: → the engine has the last token (here the fake's answer and the stream
  back; with a real model, the model's time);
- answer in: last token → the ``guidance`` event leaves (parsing, the step tracker); only
  answers that announce something;
- overhead: request out (without the wait for a request in flight) + answer in, the
  server's own time per announced clip. Target: p95 ≤ 15 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from _loopback import use_loopback_only_ice
from _media import DEMO_TASK, demo_video, vp8_stream
from _server import (
    BenchServer,
    TimingEngine,
    add_video_options,
    bench_settings,
    fmt,
    machine,
    percentile,
    run_benchmark,
    run_clients,
    running,
    table,
    wait_closed,
)

from lavia_live.contract.guidance import NO_WARNING
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.factory import open_engine
from tests.openai_server import OpenAIServer, ok

log = logging.getLogger("engine_overhead")

CLOSE_WAIT_S = 20.0
CLIPS_PER_STEP = 3
MODEL_ID = "guide"


def scripted_answers(count: int) -> list[str]:
    """Guidance that walks through the demo task, ``CLIPS_PER_STEP`` clips a step."""
    steps = TaskLibrary.load().require(DEMO_TASK).steps
    out = []
    for i in range(count):
        step = (i // CLIPS_PER_STEP) % len(steps)
        following = steps[step + 1] if step + 1 < len(steps) else steps[0]
        out.append(f"Current step: {steps[step]}\nNext step: {following}\nWarning: {NO_WARNING}")
    return out


async def main_async(args: argparse.Namespace) -> None:
    use_loopback_only_ice()
    videos = [
        demo_video(args.seed + i, width=640, height=480, fps=args.fps) for i in range(args.videos)
    ]
    streams = [vp8_stream(v, args.kbps) for v in videos]
    out_ms: list[float] = []  # clip ready → request at the server, no wait for another
    waited_ms: list[float] = []  # clip ready → engine starts (a request was in flight)
    server_ms: list[float] = []
    in_ms: list[float] = []
    overhead_ms: list[float] = []
    requests = 0
    async with OpenAIServer() as fake:
        fake.model_id = MODEL_ID
        fake.script(*(ok(text) for text in scripted_answers(5000)))
        engine = TimingEngine(open_engine(fake.base_url, api_model=MODEL_ID, api_key_env=""))
        server = BenchServer(
            bench_settings(), engine, frame_max_side=448, paused=False, record_frames=True
        )
        # the fake notes arrivals on the loop's clock (monotonic); the bench logs wall time
        wall_offset = time.time() - asyncio.get_running_loop().time()
        async with running(server):
            for video, stream in zip(videos, streams, strict=True):
                log.info("streaming %s (%.0f s)", video.path.name, len(stream) / stream.fps)
                seen = len(fake.requests)
                clients = await run_clients(
                    server.url,
                    stream.path,
                    sessions=1,
                    peers_per_process=1,
                    seconds=0,
                    linger_s=4.0,
                    timeout_s=len(stream) / stream.fps + 120,
                )
                await wait_closed(server, CLOSE_WAIT_S)
                arrivals = [r.at + wall_offset for r in fake.requests[seen:]]
                for peer in clients.peers:
                    bench_log = server.logs.get(peer.sid or "")
                    if peer.error or bench_log is None:
                        log.warning("peer failed: %s", peer.error)
                        continue
                    asked = [r for r in bench_log.sampled if r.started is not None]
                    if len(asked) != len(arrivals):
                        log.warning("%d requests, %d arrivals", len(asked), len(arrivals))
                    for rec, arrived in zip(asked, arrivals, strict=False):
                        assert rec.started is not None and rec.finished is not None
                        requests += 1
                        waited_ms.append((rec.started - rec.ready) * 1000)
                        out = (arrived - rec.started) * 1000  # without the wait
                        out_ms.append(out)
                        server_ms.append((rec.finished - arrived) * 1000)
                        if rec.emitted is not None:
                            answer_in = (rec.emitted - rec.finished) * 1000
                            in_ms.append(answer_in)
                            overhead_ms.append(out + answer_in)
        await engine.aclose()

    def row(name: str, span: str, values: list[float]) -> list[str]:
        return [name, span, str(len(values)), fmt(percentile(values, 50), 1),
                fmt(percentile(values, 95), 1)]  # fmt: skip

    rows = [
        row("waiting", "clip ready → engine starts (a request in flight)", waited_ms),
        row("request out", "engine starts → request at the server", out_ms),
        row("model server", "→ last token out of the engine (the fake: ~0)", server_ms),
        row("answer in", "last token → guidance sent (announcing answers)", in_ms),
        row("**overhead**", "request out + answer in, per announced clip", overhead_ms),
    ]
    print(
        f"## Engine overhead: OpenAI-compatible engine against a loopback server that answers "
        f"at once, {len(videos)} demo videos at {args.fps} fps, {requests} requests\n"
    )
    print(table(["span", "from → to", "n", "p50 ms", "p95 ms"], rows))
    print(f"\nTarget: overhead p95 ≤ 15 ms. {machine()}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_video_options(parser, videos=2)
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
