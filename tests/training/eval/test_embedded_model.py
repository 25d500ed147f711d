"""The embedded demo model the package ships: within its size limit, with held-out scores
that meet the targets, and still that good on demo videos rendered now from seeds that
neither its training nor its recorded evaluation used, through the real pipeline."""

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
    assert scores["clips"] >= 250
    assert scores["next_step_accuracy"] >= 0.9
    assert scores["current_step_accuracy"] >= 0.9
    assert scores["parse_rate"] == 1.0


def test_shipped_model_on_videos_from_new_seeds(tmp_path: Path) -> None:
    library = TaskLibrary.load()
    task = library.require("demo_oil_change")
    for seed in (200001, 200002, 200003):
        render_demo_video(task, seed, tmp_path / "videos", DemoSpec(narration=False))
    # the data settings the model was trained with (frame size, clip hop, oracle)
    settings = load_settings(
        PipelineSettings, files=[shipped_path("configs/train_demo.yaml")], env={}
    ).settings
    asyncio.run(build_dataset([tmp_path / "videos"], tmp_path / "ds", settings, progress=False))
    engine = open_engine(EMBEDDED, api_model=None, api_key_env="", device="cpu")
    result = asyncio.run(
        evaluate(engine, [tmp_path / "ds" / "records.jsonl"], library=library, progress=False)
    )
    assert not result.failures
    t = result.totals
    assert t.clips >= 30
    assert t.parse_rate == 1.0
    assert t.current_step_accuracy >= 0.85
    assert t.next_step_accuracy >= 0.85
