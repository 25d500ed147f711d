"""Per-clip latency of an in-process model, by guidance decoding: free, held to the task's
steps (greedy), held to the steps with beam search, and held to the steps without the
per-frame vision cache, without prefix reuse, without either, and without the model's step
classifier (where it has one). Prints a markdown table.

    python benchmarks/model_latency.py [--model embedded] [--clips 30] [--beams 4]

The clips are what a live session asks: 15-frame windows over the sampled frames of a demo
video rendered here (the data build's frames, one a second), each one frame later than the
last, so a clip shares 14 frames with the one before. They are asked one after another with
torch's threads on every core, each decoding in turn on the same clip so that the machine's
noise is shared; ratios are against free decoding. Unless a row says otherwise, an engine
keeps each frame's vision features while the frame stays in the window
(``engine.vision_cache``) and the task's fixed prompt text encoded (``engine.prefix_cache``;
beams encode the whole prompt) and, where the model has a step classifier, writes the
current step from it.
Target for the embedded model: p50 ≤ 0.3 s per clip on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from lavia_live.config.loader import load_settings
from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.records import iter_records
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import GenerationOptions, complete
from lavia_live.engines.local import LocalEngine
from lavia_live.models import model_folder
from lavia_live.resources import shipped_path
from training.config import PipelineSettings
from training.data.build import build_dataset
from training.demo.render import DemoSpec, render_demo_video


async def clips(folder: Path, count: int) -> list[list[bytes]]:
    """The JPEG frames of ``count`` live 15-frame clips of a demo video, one frame apart."""
    task = TaskLibrary.load().require("demo_oil_change")
    render_demo_video(task, 700001, folder / "videos", DemoSpec(narration=False, mistake_rate=1))
    settings = load_settings(
        PipelineSettings, files=[shipped_path("configs/train_demo.yaml")], env={}
    ).settings
    await build_dataset([folder / "videos"], folder / "ds", settings, progress=False)
    sampled = sorted({p for r in iter_records(folder / "ds" / "records.jsonl") for p in r.image})
    frames = [(folder / "ds" / p).read_bytes() for p in sampled]
    return [frames[i : i + 15] for i in range(min(count, len(frames) - 14))]


async def measure(model: str, beams: int, count: int) -> dict[str, list[float]]:
    engines = {
        "free": LocalEngine(model_folder(model), steps_only=False),
        "steps, greedy": LocalEngine(model_folder(model), steps_only=True),
        f"steps, {beams} beams": LocalEngine(model_folder(model), steps_only=True, beams=beams),
        "steps, greedy, no vision cache": LocalEngine(model_folder(model), vision_cache=0),
        "steps, greedy, no prefix reuse": LocalEngine(model_folder(model), prefix_cache=0),
        "steps, greedy, neither": LocalEngine(model_folder(model), vision_cache=0, prefix_cache=0),
    }
    unread = LocalEngine(model_folder(model))
    if unread.step_classifier is not None:
        unread.step_classifier = None
        engines["steps, greedy, no step classifier"] = unread
    times: dict[str, list[float]] = {name: [] for name in engines}
    options = GenerationOptions(max_tokens=96)
    with tempfile.TemporaryDirectory() as tmp:
        asked = await clips(Path(tmp), count)
    prompt = build_guidance_prompt(TaskLibrary.load().require("demo_oil_change"), 15)
    for i, frames in enumerate(asked):
        for name, engine in engines.items():
            started = time.perf_counter()
            await complete(engine, prompt, frames, options)
            if i > 0:  # the first clip warms up each engine
                times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded or a model folder")
    parser.add_argument("--clips", type=int, default=30, help="15-frame clips asked")
    parser.add_argument("--beams", type=int, default=4, help="beam width of the third row")
    args = parser.parse_args()
    times = asyncio.run(measure(args.model, args.beams, args.clips))
    free = statistics.median(times["free"])
    print(f"| decoding ({args.model}) | clips | p50 s | p95 s | p50 vs free |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        p50 = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
        print(f"| {name} | {len(values)} | {p50:.3f} | {p95:.3f} | {p50 / free:.2f}x |")
    print(f"\n{os.cpu_count()} CPU cores; target: p50 ≤ 0.3 s per clip on 2 cores.")


if __name__ == "__main__":
    main()
