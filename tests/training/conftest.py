"""A small real dataset shared by the training and evaluation tests: one rendered demo
video, built by the real pipeline with the oracle annotator, plus a tiny base model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lavia_live.contract.tasks import TaskLibrary
from training.config import PipelineSettings, TrainSettings
from training.data.build import build_dataset
from training.demo.render import DemoSpec, render_demo_video
from training.train.setup import init_tiny_model


@pytest.fixture(scope="session")
def demo_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-data")
    task = TaskLibrary.load().require("demo_oil_change")
    render_demo_video(
        task, 11, root / "videos", DemoSpec(min_step_s=2.0, max_step_s=3.0, narration=False)
    )
    settings = PipelineSettings.model_validate(
        {"data": {"annotate": {"annotator": "oracle"}, "extract": {"clip_hop": 4, "max_side": 112}}}
    )
    asyncio.run(build_dataset([root / "videos"], root / "ds", settings))
    return root / "ds" / "records.jsonl"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, demo_records: Path) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "base"
    settings = TrainSettings(
        model=path,
        init_tiny=True,
        train_records=[demo_records],
        tiny={"hidden_size": 128, "layers": 2, "vision_hidden": 64, "vision_depth": 1},
    )
    return init_tiny_model(settings)
