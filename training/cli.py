"""The offline pipeline's ``lavia`` commands: ``lavia data build | demo | export``.

Registered through the ``lavia.commands`` entry point, so the live package does not import
this one. Each option that is also a setting becomes a ``--set`` override, so ``lavia
config``-style provenance stays right and flags win over files and environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lavia_live.atomic import atomic_open
from lavia_live.cli import add_config_options, apply_setting_flags, load_config
from lavia_live.contract.records import iter_records
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import Engine
from training.config import PipelineSettings

log = logging.getLogger(__name__)

# option dest -> setting it overrides
_SETTING_FLAGS = {
    "annotator": "data.annotate.annotator",
    "model": "data.annotate.model",
    "base_url": "data.annotate.base_url",
    "concurrency": "data.annotate.max_concurrency",
    "transcribe": "data.transcribe.backend",
    "max_side": "data.extract.max_side",
    "base_model": "train.model",
    "output_dir": "train.output_dir",
    "max_steps": "train.max_steps",
}


def _settings(args: argparse.Namespace) -> PipelineSettings:
    apply_setting_flags(args, _SETTING_FLAGS)
    return load_config(args, PipelineSettings).settings


def _cmd_build(args: argparse.Namespace) -> int:
    from training.data.build import build_dataset
    from training.data.estimate import estimate_build

    settings = _settings(args)
    if args.dry_run:
        print(estimate_build(args.inputs, settings).table())
        return 0
    report = asyncio.run(
        build_dataset(
            args.inputs, Path(args.out), settings, use_ray=args.ray, progress=args.progress
        )
    )
    print(
        f"{report.records} records from {report.clips} clips of {report.videos_in} video(s) "
        f"in {report.out} (card: {report.out / 'card.md'}); "
        f"cost ${report.annotation_usd + report.transcription_usd:.4f}; "
        f"{len(report.failures)} failure(s)"
    )
    for failure in report.failures:
        print(f"  {failure.where}: {failure.stage}: {failure.reason}", file=sys.stderr)
    return 1 if report.failures and not report.records else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from training.demo.render import DemoSpec, demo_seeds, render_demo_video

    settings = _settings(args)
    task = TaskLibrary.load(settings.tasks.folder).require("demo_oil_change")
    spec = DemoSpec(mistake_rate=args.mistake_rate, narration=not args.no_narration)
    out = Path(args.out)
    seeds = demo_seeds(task, spec, args.seed, args.videos, starting_step=args.starting_step)
    for seed in tqdm(
        seeds,
        desc="render",
        unit="video",
        disable=None if args.progress is None else not args.progress,
    ):
        video = out / f"demo_{seed:05d}.mp4"
        if video.exists() and video.with_name(f"demo_{seed:05d}.truth.json").exists():
            continue  # rendered by an earlier run (the truth file is written last)
        render_demo_video(task, seed, out, spec)
    print(f"{args.videos} demo video(s) in {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    records = list(iter_records(args.records))
    base = Path(args.records).resolve().parent
    items: list[dict[str, Any]] = []
    for record in records:
        item = record.to_llava()
        if args.absolute_paths:
            item["image"] = [str(base / p) for p in item["image"]]
        items.append(item)
    with atomic_open(args.out) as fh:
        json.dump(items, fh, ensure_ascii=False, indent=1)
    print(
        f"{len(items)} records in LLaVA format -> {args.out}"
        + ("" if args.absolute_paths else f" (frame paths relative to {base}: --image_folder)")
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.train.loop import Trainer
    from training.train.setup import TrainError, estimate_run

    settings = _settings(args).train
    if args.dry_run:
        from training.train.data import RecordDataset, load_examples
        from training.train.setup import prepare_model

        loaded = prepare_model(settings)
        dataset = RecordDataset(
            load_examples(settings.train_records), loaded.processor, loaded.family
        )
        print(estimate_run(loaded.model, settings, dataset.approx_lengths()).table())
        return 0
    trainer = Trainer(settings, progress=args.progress)
    if args.resume != "no":
        resumed = trainer.resume(None if args.resume == "auto" else Path(args.resume))
        if not resumed and args.resume != "auto":
            raise TrainError(f"no complete checkpoint at {args.resume}")
        if resumed:
            print(f"resumed from step {trainer.state.step}")
    result = trainer.train()
    last = next((h for h in reversed(result.state.history) if "loss" in h), None)
    summary = f"loss {last['loss']:.4f}, " if last else ""
    print(
        f"trained {result.state.step} steps ({summary}{result.state.samples} samples); "
        f"model: {result.final_dir}"
    )
    return 0


def _eval_engine(
    args: argparse.Namespace, settings: PipelineSettings, cpu_threads: int = 0
) -> Engine:
    """The engine ``lavia eval`` asks: ``--model`` with the config's decoding settings;
    ``cpu_threads`` 0 leaves torch one thread per core."""
    from lavia_live.engines.factory import open_engine

    return open_engine(
        args.model,
        api_model=args.api_model,
        api_key_env=args.api_key_env,
        device=args.device,
        dtype=settings.engine.dtype,
        cpu_threads=cpu_threads,
        steps_only=settings.engine.steps_only,
        beams=settings.engine.beams,
        image_detail=settings.engine.image_detail,
        vision_cache=settings.engine.vision_cache,
        prefix_cache=settings.engine.prefix_cache,
    )


def _cmd_eval_live(args: argparse.Namespace, settings: PipelineSettings) -> int:
    from lavia_live.engines.factory import frame_max_side
    from training.eval.live import evaluate_live
    from training.eval.live_report import write_live_report

    library = TaskLibrary.load(settings.tasks.folder)
    engine = _eval_engine(args, settings, settings.engine.cpu_threads)
    result = asyncio.run(
        evaluate_live(
            engine,
            args.live,
            library=library,
            settings=settings,
            frame_max_side=frame_max_side(args.model),
            realtime=args.realtime,
            progress=args.progress,
        )
    )
    write_live_report(result, Path(args.out), dict(library))
    t = result.totals

    def num(value: float | None, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.2f}{unit}"

    print(
        f"{t.videos} video{'' if t.videos == 1 else 's'} ({t.duration_s / 60:.1f} min): "
        f"{t.announced}/{t.spans} steps "
        f"announced, latency median {num(t.latency_median_s, ' s')} / p90 "
        f"{num(t.latency_p90_s, ' s')}, {num(t.announcements_per_step)} announcements per "
        f"step, {t.flaps} flaps, mistakes warned on time {t.mistakes_warned_on_time}/"
        f"{t.mistakes}, {t.false_warnings} false warnings; report: {Path(args.out) / 'live.md'}"
    )
    for failure in result.failures:
        print(f"  {failure}", file=sys.stderr)
    return 1 if result.failures else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from training.eval.report import write_report
    from training.eval.run import evaluate

    settings = _settings(args)
    if args.live:
        return _cmd_eval_live(args, settings)
    engine = _eval_engine(args, settings)
    result = asyncio.run(
        evaluate(
            engine,
            args.data,
            library=TaskLibrary.load(settings.tasks.folder),
            limit=args.limit,
            concurrency=args.concurrency,
            progress=args.progress,
        )
    )
    write_report(result, Path(args.out))
    t, q = result.totals, result.question_totals
    parts = []
    if t.clips:
        parts.append(
            f"{t.clips} clips: next-step {t.next_step_accuracy:.1%}, current-step "
            f"{t.current_step_accuracy:.1%}, parse rate {t.parse_rate:.1%}, "
            f"{t.steps_outside_task} naming a step outside the task, "
            f"latency {t.latency_mean_s:.3f} s/clip"
        )
    if q.questions:
        accuracy = "n/a" if q.question_accuracy is None else f"{q.question_accuracy:.1%}"
        parts.append(f"{q.questions} questions: {accuracy} with every fact")
    print(f"{'; '.join(parts)}; report: {Path(args.out) / 'report.md'}")
    return 0


def register_eval(sub: Any) -> None:
    """Add ``lavia eval`` to the ``lavia`` command."""
    p = sub.add_parser(
        "eval",
        help="score a model on held-out records (accuracy, mistakes, questions, latency) "
        "or on demo videos through the live loop (--live)",
        description="MODEL is a local checkpoint folder, an OpenAI-compatible endpoint URL "
        "(e.g. http://127.0.0.1:30000/v1 for SGLang; give --api-model), or openai:MODEL "
        "(e.g. openai:gpt-4o), so models are compared on the same clips and prompts; "
        "'embedded' is the embedded demo model. --data scores guidance records (current- and "
        "next-step accuracy, also by clip length and, for clips of demo videos with their "
        "truth, by time into the step; answers naming a step outside the task "
        "fail) and question records (every fact stated) in eval.json and report.md. --live "
        "runs demo videos (demo_*.mp4 with demo_*.truth.json beside them) through the live "
        "loop, as lavia watch --fast does, and scores what the assistant announced and when "
        "(live.json, live.md, a timeline plot per video).",
    )
    p.add_argument("--model", required=True, metavar="PATH_OR_ENDPOINT")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", nargs="+", metavar="RECORDS", help="records.jsonl")
    source.add_argument(
        "--live", nargs="+", metavar="VIDEOS", help="demo videos or folders of them"
    )
    p.add_argument("--out", default="runs/eval", help="report folder (default runs/eval)")
    p.add_argument("--api-model", help="model name at an endpoint URL")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="'' for a keyless server")
    p.add_argument("--device", default="cpu", help="local model device (cpu, cuda, cuda:1)")
    p.add_argument("--limit", type=int, help="only the first N records (--data)")
    p.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight (--data, endpoints)"
    )
    p.add_argument(
        "--realtime", action="store_true",
        help="--live at the videos' own pace (clips dropped while the model is busy, as live) "
        "instead of answering every clip",
    )  # fmt: skip
    _progress_options(p)
    add_config_options(p)
    p.set_defaults(func=_cmd_eval, settings_model=PipelineSettings)


def _progress_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bars (default: when stderr is a terminal)",
    )  # fmt: skip


def register_train(sub: Any) -> None:
    """Add ``lavia train`` to the ``lavia`` command."""
    p = sub.add_parser(
        "train",
        help="fine-tune a multimodal model on instruction records",
        description="Video instruction tuning (Qwen2.5-VL or LLaVA-style checkpoints from a "
        "local folder): LoRA, QLoRA or full fine-tuning through accelerate. Settings come from "
        "--config files (configs/train_*.yaml); resumes from the latest checkpoint.",
    )
    p.add_argument("--model", dest="base_model", help="base model folder (train.model)")
    p.add_argument("--output-dir", help="run folder (train.output_dir)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument(
        "--resume", default="auto",
        help="auto (latest checkpoint in the run folder, if any), no, or a checkpoint folder",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="parameters, tokens, memory; no training")
    _progress_options(p)
    add_config_options(p)
    p.set_defaults(func=_cmd_train, settings_model=PipelineSettings)


def register(sub: Any) -> None:
    """Add ``lavia data ...`` to the ``lavia`` command."""
    data = sub.add_parser("data", help="build video-instruction datasets (LaViA pipeline)")
    cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = cmds.add_parser(
        "build",
        help="transcribe, clip and annotate videos into instruction records",
        description="Inputs are video files, folders of videos, or JSONL manifests "
        "(path, title, task_id, transcript or manual). Resumable: run it again to finish.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--annotator", choices=["openai", "oracle"], help="oracle: demo videos only")
    p.add_argument("--model", help="annotation model (default gpt-4o)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. a local SGLang /v1")
    p.add_argument("--concurrency", type=int, help="annotation requests in flight")
    p.add_argument("--transcribe", choices=["local", "openai"], help="transcription backend")
    p.add_argument("--max-side", type=int, help="longer side of written frames in pixels")
    p.add_argument("--dry-run", action="store_true", help="count clips, estimate tokens and cost")
    p.add_argument("--ray", action="store_true", help="run the video stage on Ray (RAY_ADDRESS)")
    _progress_options(p)
    add_config_options(p)
    p.set_defaults(func=_cmd_build, settings_model=PipelineSettings)

    p = cmds.add_parser("demo", help="render videos of the procedural demo task")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--videos", type=int, default=10, help="how many videos (default 10)")
    p.add_argument("--seed", type=int, default=0, help="first seed; video i uses seed+i")
    p.add_argument(
        "--mistake-rate", type=float, default=0.25, help="share of videos with a mistake"
    )
    p.add_argument("--no-narration", action="store_true", help="no spoken narration track")
    p.add_argument(
        "--starting-step",
        type=int,
        default=None,
        metavar="N",
        help="only videos whose person starts with step N (1-based; 2 or 3: a mistake at the "
        "start): seeds from --seed up that plan no such video are passed over",
    )
    _progress_options(p)
    add_config_options(p)
    p.set_defaults(func=_cmd_demo, settings_model=PipelineSettings)

    p = cmds.add_parser("export", help="write records in another trainer's format")
    p.add_argument("records", help="records.jsonl from lavia data build")
    p.add_argument("--format", choices=["llava"], default="llava")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--absolute-paths", action="store_true", help="absolute frame paths")
    p.set_defaults(func=_cmd_export)
