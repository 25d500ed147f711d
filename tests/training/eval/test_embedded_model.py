"""The embedded demo model the package ships: within its size limit, with held-out scores
that meet its gate (`scripts/build_demo_model`), and still that good on demo videos rendered
now from seeds that neither its training nor its recorded evaluation used, through the real
pipeline: guidance, mistakes and questions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from lavia_live.config.loader import load_settings
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.factory import open_engine
from lavia_live.models import EMBEDDED, model_folder
from lavia_live.resources import shipped_path
from training.config import PipelineSettings
from training.data.build import build_dataset
from training.demo.render import DemoSpec, render_demo_video
from training.eval.run import evaluate


def test_shipped_model_fits_the_package_and_met_its_targets() -> None:
    folder = model_folder(EMBEDDED)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    scores = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    assert scores["clips"] >= 800 and scores["questions"] >= 350
    assert scores["parse_rate"] == 1.0
    assert scores["steps_outside_task"] == 0
    assert scores["next_step_accuracy"] >= 0.97
    assert scores["next_step_accuracy_worst_bucket"] >= 0.93
    assert scores["current_step_accuracy"] >= 0.97
    assert scores["mistake_recall"] >= 0.95 and scores["mistake_precision"] >= 0.95
    assert scores["question_accuracy"] >= 0.91
    live = json.loads((folder / "live.json").read_text(encoding="utf-8"))
    assert live["videos"] >= 16 and live["engine_errors"] == 0
    assert live["announced_share"] == 1.0
    assert live["latency_median_s"] <= 3.0
    assert live["announcements_per_step"] <= 1.2
    assert live["false_warnings_per_10min_clean"] <= 1.0


# training used seeds 0-249, 200000-200039, 300000-300059 and 20 or 24 from each of 600000,
# 700000, 800000, 900000, 1000000, 1100000, 1200000, 1300000, 1400000, 1500000, 1600000,
# 1700000, 1800000, 1900000, 2000000, 2100000, 2200000, 2300000, 2400000, 2500000, 2600000,
# 2700000, 2800000, 2900000, 3000000 (up to 3000101), 3100000 (up to 3100098), 3200000,
# 3300000, 3400000, 3500000, 3600000, 3700000, 3800000 (up to 3800150), 3900000 (up to
# 3900144), 4000000 (up to 4000120) and 4100000 (up to 4100102)
SEEDS = tuple(range(400001, 400007))


def test_shipped_model_on_videos_from_new_seeds(tmp_path: Path) -> None:
    library = TaskLibrary.load()
    task = library.require("demo_oil_change")
    # three clean videos, one with steps out of order, two with the oil pan skipped
    spec = DemoSpec(narration=False, mistake_rate=0.5)
    truths = [render_demo_video(task, seed, tmp_path / "videos", spec) for seed in SEEDS]
    assert sorted(len(t.mistakes) for t in truths) == [0, 0, 0, 1, 1, 1]
    # the data settings the model was trained with (frame size, oracle, live-like clips and
    # questions)
    settings = load_settings(
        PipelineSettings,
        files=[shipped_path("configs/train_demo.yaml")],
        env={},
        overrides=[
            "data.annotate.questions_per_clip=0.3",
            "data.extract.clip_hop=2",  # live-like clips: 4 to 15 frames
            "data.extract.min_frames=4",
        ],
    ).settings
    asyncio.run(build_dataset([tmp_path / "videos"], tmp_path / "ds", settings, progress=False))
    engine = open_engine(EMBEDDED, api_model=None, api_key_env="", device="cpu")
    # the current step comes from the model's step classifier
    assert getattr(engine, "step_classifier", None) is not None
    result = asyncio.run(
        evaluate(engine, [tmp_path / "ds" / "records.jsonl"], library=library, progress=False)
    )
    assert not result.failures
    t, q = result.totals, result.question_totals
    # measured when it shipped: 164 clips, next 99.4%, current 100%, mistakes recall 1.0
    # and precision 1.0 (24 clips show one), questions 94% of 50 (the same model without its
    # step classifier: 95.1%, 95.7%, 1.0, 0.96, 94%)
    assert t.clips >= 150 and q.questions >= 30
    assert t.parse_rate == 1.0 and t.steps_outside_task == 0
    assert t.current_step_accuracy >= 0.95
    assert t.next_step_accuracy >= 0.95
    assert t.mistake_recall is not None and t.mistake_recall >= 0.8
    assert t.mistake_precision is not None and t.mistake_precision >= 0.8
    assert q.question_accuracy is not None and q.question_accuracy >= 0.7
