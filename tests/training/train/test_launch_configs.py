"""The multi-GPU launch configs and the GPU check script, as far as a CPU machine can tell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("multi_gpu", DistributedType.MULTI_GPU),
        ("deepspeed_zero2", DistributedType.DEEPSPEED),
        ("deepspeed_zero3", DistributedType.DEEPSPEED),
        ("fsdp", DistributedType.FSDP),
    ],
)
def test_accelerate_configs_load_and_point_at_real_files(name: str, kind: DistributedType) -> None:
    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == kind and config.mixed_precision == "bf16"
    if kind == DistributedType.DEEPSPEED:
        ds_file = ROOT / config.deepspeed_config["deepspeed_config_file"]
        stage = json.loads(ds_file.read_text())["zero_optimization"]["stage"]
        assert stage == (3 if "zero3" in name else 2)
        assert config.deepspeed_config["zero3_init_flag"] == (stage == 3)


def test_gpu_check_without_a_gpu_says_so() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "no NVIDIA GPU" in done.stdout


def test_gpu_check_code_path_runs_on_a_tiny_model_on_the_cpu() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check"), "--tiny", "--device", "cpu"]
    done = subprocess.run(
        [*cmd, "--frames", "2", "--pixels", "56", "--steps", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| tokens/s" in done.stdout and "| tokens per sample" in done.stdout
    serving = done.stdout.split("### Training")[0]
    assert "| time to first token, new clip" in serving and "| decoding" in serving
    assert "| clips/s, 8 sessions at once (batched)" in serving
    assert "| time to first token, new clip, prompt encoded whole" in serving
