"""Training throughput of the embedded demo model on this machine's CPU.

Renders a few demo videos, builds their records with the real pipeline (oracle
annotator), creates the tiny Qwen2.5-VL of ``configs/train_demo.yaml`` and trains it for a
fixed number of steps at several batch sizes, all in one run. Prints samples/s and
tokens/s per batch size (steady state: the first steps are excluded).

    python benchmarks/train_throughput.py [--steps 20] [--batch-sizes 1 2 4] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from lavia_live.contract.tasks import TaskLibrary  # noqa: E402
from training.config import PipelineSettings, TrainSettings  # noqa: E402
from training.data.build import build_dataset  # noqa: E402
from training.demo.render import DemoSpec, render_demo_video  # noqa: E402
from training.train.loop import Trainer  # noqa: E402
from training.train.setup import init_tiny_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the rate")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = yaml.safe_load((ROOT / "configs" / "train_demo.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="lavia-bench-") as tmp:
        work = Path(tmp)
        task = TaskLibrary.load().require("demo_oil_change")
        for seed in (0, 1):
            render_demo_video(task, seed, work / "videos", DemoSpec(narration=False))
        settings = PipelineSettings.model_validate({"data": demo["data"]})
        asyncio.run(build_dataset([work / "videos"], work / "ds", settings, progress=False))
        records = work / "ds" / "records.jsonl"
        base_settings = {
            **demo["train"],
            "model": str(work / "base"),
            "train_records": [str(records)],
            "val_records": [],
        }
        init_tiny_model(TrainSettings.model_validate(base_settings))
        rows = []
        for batch_size in args.batch_sizes:
            run = {
                **base_settings,
                "output_dir": str(work / f"run-{batch_size}"),
                "batch_size": batch_size,
                "max_steps": args.warmup + args.steps,
                "log_every": 1,
                "save_every": 10**6,
            }
            trainer = Trainer(TrainSettings.model_validate(run), progress=False)
            started = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - started
            metrics = work / f"run-{batch_size}" / "metrics.jsonl"
            log = [json.loads(line) for line in metrics.open() if '"loss"' in line]
            first, last = log[args.warmup - 1], log[-1]  # end of warm-up, end of run
            span_s = last["elapsed_s"] - first["elapsed_s"]
            samples = last["samples"] - first["samples"]
            tokens = last["tokens"] - first["tokens"]
            rows.append((batch_size, samples / span_s, tokens / span_s, wall))
    params = sum(p.numel() for p in trainer.model.parameters())
    print(f"embedded demo model: {params / 1e6:.2f} M parameters, {args.threads} CPU threads, "
          f"{args.steps} measured steps after {args.warmup} warm-up steps")  # fmt: skip
    print("| batch size | samples/s | tokens/s | wall s (incl. warm-up, save) |")
    print("|---:|---:|---:|---:|")
    for batch_size, sps, tps, wall in rows:
        print(f"| {batch_size} | {sps:.2f} | {tps:,.0f} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
