"""The `lavia` command as a user runs it: a real subprocess of the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lavia_live.cli import main


def lavia(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lavia_live.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_help_lists_the_commands() -> None:
    out = lavia("--help")
    assert out.returncode == 0
    for command in ("config", "tasks", "serve", "watch", "model-server", "data", "train", "eval"):
        assert f"    {command} " in out.stdout, command


def test_config_shows_values_and_sources() -> None:
    out = lavia(
        "config",
        "--set",
        "logging.level=INFO",
        env={"LAVIA_SAMPLING__MIN_FRAMES_FOR_GUIDANCE": "6"},
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert lines["logging.level"].endswith("# flag --set logging.level")
    assert '"INFO"' in lines["logging.level"]
    assert lines["sampling.min_frames_for_guidance"].endswith(
        "# env LAVIA_SAMPLING__MIN_FRAMES_FOR_GUIDANCE"
    )
    assert lines["sampling.clip_frames"].endswith("# default")


def test_config_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--json", "--set", "tasks.default_task=x"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tasks.default_task"] == {"value": "x", "source": "flag --set tasks.default_task"}


def test_bad_config_fails_at_start_with_the_key_named() -> None:
    out = lavia("tasks", env={"LAVIA_SAMPLING__CLIP_FRAMES": "lots"})
    assert out.returncode == 2
    assert "sampling.clip_frames" in out.stderr and "LAVIA_SAMPLING__CLIP_FRAMES" in out.stderr
    assert "Traceback" not in out.stderr
    out = lavia("config", "--sett", "x")
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr


def test_tasks_lists_and_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    assert "demo_oil_change" in listing and "honda_gx160_oil_change" in listing
    assert main(["tasks", "demo_oil_change"]) == 0
    assert "1. Slide the oil pan under the engine." in capsys.readouterr().out
    assert main(["tasks", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("id: x\ntitle: T\n")
    assert main(["tasks", "--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml" in err and "field 'steps'" in err


def test_model_server_refuses_a_model_it_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    for model in ("openai:gpt-4o", "http://127.0.0.1:30000/v1"):
        assert main(["model-server", "--model", model, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert "serves an in-process model: --model is 'embedded' or a model folder" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: lavia" in capsys.readouterr().out


def test_tasks_piped_into_head_ends_quietly() -> None:
    """`lavia tasks demo_oil_change | head -1`: the reader closes stdout after one line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lavia_live.cli", "tasks", "demo_oil_change"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    returncode = process.wait(timeout=120)
    assert first == "demo_oil_change: Change the oil on a small engine (demo)\n"
    assert stderr == ""
    # 0 if it had written everything before the reader left, else the SIGPIPE status
    assert returncode in (0, 141)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_stdout_closed_before_any_output_ends_quietly(buffered: bool) -> None:
    """The same with a reader gone before the first byte, so the pipe is surely broken when
    the command writes (at its first print, or at its final flush when buffered)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "lavia_live.cli", "tasks", "demo_oil_change"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 141


def test_commands_that_need_no_model_do_not_load_torch() -> None:
    """Registering every command (what `lavia --help` and `lavia tasks` do) stays light:
    torch and transformers load only in the commands that run a model."""
    code = (
        "import sys; from lavia_live.cli import build_parser; build_parser(); "
        "print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
