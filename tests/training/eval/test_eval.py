"""`lavia eval` on real records: a local checkpoint and an OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lavia_live.contract.guidance import TASK_COMPLETE, Guidance, parse_guidance
from lavia_live.contract.records import read_records
from lavia_live.contract.tasks import COMPLETE, TaskLibrary, match_step
from lavia_live.engines.openai import OpenAIEngine, OpenAIEngineOptions
from tests.openai_server import OpenAIServer, content, ok
from training.eval.metrics import UNPARSED, score, totals
from training.eval.report import write_report
from training.eval.run import evaluate

LIBRARY = TaskLibrary.load()
STEPS = LIBRARY.require("demo_oil_change").steps


def test_step_matching_exact_fuzzy_and_complete() -> None:
    assert match_step(STEPS[2].upper().rstrip("."), STEPS) == STEPS[2]
    assert match_step("loosen the drain plug using the ratchet", STEPS) == STEPS[2]
    assert match_step(TASK_COMPLETE, STEPS) == COMPLETE
    assert match_step("make a sandwich", STEPS) is None
    assert match_step(None, STEPS) is None


def test_scores_and_totals() -> None:
    good = parse_guidance(Guidance(STEPS[1], STEPS[2], "The pan is missing.").to_text())
    wrong_next = parse_guidance(Guidance(STEPS[1], STEPS[5]).to_text())
    garbage = parse_guidance("???")
    scores = [
        score("a", good, STEPS[1], STEPS[2], "pan missing", STEPS, 0.1),
        score("b", wrong_next, STEPS[1], STEPS[2], None, STEPS, 0.2),
        score("c", garbage, STEPS[3], STEPS[4], "x", STEPS, 0.3),
        score("d", good, STEPS[1], STEPS[2], None, STEPS, 0.4),
    ]
    t = totals(scores)
    assert t.parse_rate == 0.75
    assert t.current_step_accuracy == 0.75 and t.next_step_accuracy == 0.5
    assert t.mistake_precision == 0.5 and t.mistake_recall == 0.5
    assert t.confusion[STEPS[3]] == {UNPARSED: 1}
    assert t.latency_mean_s == pytest.approx(0.25)


def test_endpoint_eval_counts_exactly(demo_records: Path, tmp_path: Path) -> None:
    records = [r for r in read_records(demo_records) if r.annotation is not None]

    async def go() -> object:
        async with OpenAIServer() as server:
            # even clips: the true answer; odd clips: garbage
            server.script(
                *[
                    ok(r.answer_text) if i % 2 == 0 else content("no idea")
                    for i, r in enumerate(records)
                ]
            )
            engine = OpenAIEngine(
                OpenAIEngineOptions(model="m", base_url=server.base_url, api_key_env="")
            )
            return await evaluate(engine, [demo_records], library=LIBRARY, progress=False)

    result = asyncio.run(go())
    even = (len(records) + 1) // 2
    assert result.totals.clips == len(records)
    assert result.totals.parse_rate == pytest.approx(even / len(records))
    assert result.totals.next_step_accuracy == pytest.approx(even / len(records))
    assert result.totals.current_step_accuracy == pytest.approx(even / len(records))
    summary = write_report(result, tmp_path / "eval")
    assert summary["clips"] == len(records)
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "next-step accuracy" in report and "confusion.png" in report
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == len(records)


def test_cli_eval_of_a_local_checkpoint(
    tiny_base: Path, demo_records: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "lavia_live.cli", "eval", "--model", str(tiny_base)]
    cmd += ["--data", str(demo_records), "--out", str(out), "--limit", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "eval.json").read_text())
    assert data["clips"] == 3 and 0.0 <= data["parse_rate"] <= 1.0
    assert data["latency_mean_s"] > 0
    assert "3 clips" in done.stdout
