"""Local-engine throughput with 1, 4 and 8 sessions asking at once: batched against one at a
time, and with the per-frame vision cache against without. Prints a markdown table.

    python benchmarks/engine_throughput.py [--model embedded] [--clips 6] [--sessions 1,4,8]

The embedded model in this process with one torch thread (as ``lavia serve`` runs it,
``engine.cpu_threads: 1``). Each session asks guidance for its own live window over the
sampled frames of a demo video rendered here, one frame later each time, as fast as its
answers come (a live session asks at most once a second: this is the capacity). Engines:

- one at a time: ``engine.max_batch: 1`` (requests queue on the model);
- batched: ``engine.max_batch: 8`` (requests waiting when the model is free run together);
- batched, no vision cache: the same with ``engine.vision_cache: 0``;
- batched, no prefix reuse: the same with ``engine.prefix_cache: 0`` (prefix reuse applies
  to a batch of one request: it shows with one session).

For each session count the engines take turns, so the machine's load moves them alike.
Reported: clips/s over all sessions and the p50/p95 time per request (from asking to the
answer, waiting included), with ratios against one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _server import fmt, machine, percentile, run_benchmark, table
from model_latency import clips

from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import GenerationOptions, complete
from lavia_live.engines.local import LocalEngine
from lavia_live.models import model_folder

ENGINES = {
    "one at a time": {"max_batch": 1},
    "batched": {"max_batch": 8},
    "batched, no vision cache": {"max_batch": 8, "vision_cache": 0},
    "batched, no prefix reuse": {"max_batch": 8, "prefix_cache": 0},
}


async def run_sessions(
    engine: LocalEngine, windows: list[list[bytes]], sessions: int, per_session: int
) -> tuple[float, list[float]]:
    """Clips per second and each request's time, ``sessions`` asking at once."""
    prompt = build_guidance_prompt(TaskLibrary.load().require("demo_oil_change"), 15)
    times: list[float] = []

    async def session(k: int) -> None:
        for c in range(per_session):
            clip = windows[(k * 3 + c) % len(windows)]
            asked = time.perf_counter()
            await complete(engine, prompt, clip, GenerationOptions(96))
            times.append(time.perf_counter() - asked)

    started = time.perf_counter()
    await asyncio.gather(*(session(k) for k in range(sessions)))
    return sessions * per_session / (time.perf_counter() - started), times


async def main_async(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.sessions.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        windows = await clips(Path(tmp), 40)
    folder = model_folder(args.model)
    engines = {
        name: LocalEngine(folder, cpu_threads=1, **options)  # type: ignore[arg-type]
        for name, options in ENGINES.items()
    }
    for engine in engines.values():  # warm-up
        await complete(
            engine,
            build_guidance_prompt(TaskLibrary.load().require("demo_oil_change"), 15),
            windows[0],
            GenerationOptions(96),
        )
    rows = []
    for n in counts:
        results = {}
        for name, engine in engines.items():
            if engine.vision_cache is not None:
                engine.vision_cache.clear()
            results[name] = await run_sessions(engine, windows, n, args.clips)
        base_rate, base_times = results["one at a time"]
        for name, (rate, times) in results.items():
            rows.append(
                [
                    n,
                    name,
                    len(times),
                    fmt(rate, 2),
                    f"{rate / base_rate:.2f}x",
                    fmt(percentile(times, 50) * 1000, 0),
                    fmt(percentile(times, 95) * 1000, 0),
                    f"{percentile(times, 95) / percentile(base_times, 95):.2f}x",
                ]
            )
    for engine in engines.values():
        await engine.aclose()
    print(
        f"## Local engine throughput: {args.model}, one torch thread, guidance held to the "
        f"steps, {args.clips} live clips per session asked back to back\n"
    )
    headers = ["sessions", "engine", "clips", "clips/s", "vs one at a time", "p50 ms",
               "p95 ms", "p95 vs one at a time"]  # fmt: skip
    print(table(headers, rows))
    print(f"\n{machine()}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded or a model folder")
    parser.add_argument("--clips", type=int, default=6, help="clips each session asks")
    parser.add_argument("--sessions", default="1,4,8", help="session counts")
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
