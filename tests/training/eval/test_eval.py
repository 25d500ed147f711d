"""`lavia eval` on real records: a local checkpoint and an OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lavia_live.cli import main
from lavia_live.contract.guidance import TASK_COMPLETE, Guidance, parse_guidance
from lavia_live.contract.prompt import build_question_prompt
from lavia_live.contract.records import InstructionRecord, QuestionInfo, read_records, write_jsonl
from lavia_live.contract.tasks import COMPLETE, TaskLibrary, match_step
from lavia_live.engines.openai import OpenAIEngine, OpenAIEngineOptions
from tests.openai_server import OpenAIServer, content, ok
from training.eval.metrics import UNPARSED, score, totals
from training.eval.report import write_report
from training.eval.run import EvalResult, evaluate

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
    # by time into the step, from the demo video's truth file read here on its own
    expected: dict[str, list[bool]] = {}
    for i, r in enumerate(records):
        assert r.source_video and r.frame_timestamps
        truth = json.loads(Path(r.source_video.replace(".mp4", ".truth.json")).read_text())
        frame = round(r.frame_timestamps[-1] * truth["fps"])
        start = max(s["start_frame"] for s in truth["spans"] if s["start_frame"] <= frame)
        into = (frame - start) / truth["fps"]
        name = "0-2 s" if into < 2 else "2-4 s" if into < 4 else "4 s or more"
        expected.setdefault(name, []).append(i % 2 == 0)
    by_time = result.totals.by_time_into_step
    assert {k: v["clips"] for k, v in by_time.items() if v["clips"]} == {
        k: len(v) for k, v in expected.items()
    }
    for name, right in expected.items():
        assert by_time[name]["current_step_accuracy"] == pytest.approx(sum(right) / len(right))
    summary = write_report(result, tmp_path / "eval")
    assert summary["clips"] == len(records)
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "next-step accuracy" in report and "confusion.png" in report
    assert "## By time into the step" in report and summary["by_time_into_step"] == by_time
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == len(records)


OUT_OF_SCOPE = "I can only help with the demo task's steps."
# kind, question, facts, the answer the scripted model gives, whether that answer is right
QUESTIONS = [
    ("next", "What do I do next?", [STEPS[3]], f"Next, {STEPS[3].lower()}", True),
    ("next", "And after that?", [STEPS[4]], f"Next: {STEPS[5]}", False),
    ("out_of_scope", "What is the capital of France?", [OUT_OF_SCOPE.rstrip(".")],
     OUT_OF_SCOPE, True),
    ("steps_left", "How many steps are left?", ["3"], "13 steps are left.", False),
]  # fmt: skip


def _question_records(demo_records: Path, path: Path) -> list[InstructionRecord]:
    """Question records on the first demo clips (frame paths made absolute)."""
    task = LIBRARY.require("demo_oil_change")
    root = demo_records.resolve().parent
    out = []
    for i, (kind, question, facts, _, _) in enumerate(QUESTIONS):
        clip = read_records(demo_records)[i]
        prompt = build_question_prompt(task, len(clip.image), question)
        out.append(
            InstructionRecord.model_validate(
                {
                    "id": f"q{i}",
                    "image": [str(root / p) for p in clip.image],
                    "conversations": [
                        {"from": "human", "value": prompt.llava_text()},
                        {"from": "gpt", "value": "(reference)"},
                    ],
                    "task_id": task.id,
                    "question": QuestionInfo(kind=kind, question=question, facts=facts),
                }
            )
        )
    write_jsonl(path, out)
    return out


def test_question_records_are_asked_and_scored_apart(demo_records: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.jsonl"
    _question_records(demo_records, questions)
    guidance = [r for r in read_records(demo_records) if r.annotation is not None]

    async def go(
        data: list[Path], answers: list[str]
    ) -> tuple[EvalResult, list[dict[str, object]]]:
        async with OpenAIServer() as server:
            server.script(*[ok(a) for a in answers])
            engine = OpenAIEngine(
                OpenAIEngineOptions(model="m", base_url=server.base_url, api_key_env="")
            )
            result = await evaluate(engine, data, library=LIBRARY, progress=False)
            return result, [r.body for r in server.requests]

    q_answers = [q[3] for q in QUESTIONS]
    mixed, bodies = asyncio.run(
        go([questions, demo_records], q_answers + [r.answer_text for r in guidance])
    )
    assert mixed.totals.clips == len(guidance)  # guidance metrics: guidance records only
    assert mixed.totals.next_step_accuracy == 1.0 and mixed.totals.steps_outside_task == 0
    q = mixed.question_totals
    assert q.questions == len(QUESTIONS)
    assert q.question_accuracy == 0.5
    assert q.question_accuracy_by_kind == {"next": 0.5, "out_of_scope": 1.0, "steps_left": 0.0}
    assert [s.ok for s in mixed.questions] == [q[4] for q in QUESTIONS]
    asked = json.dumps(bodies[0])
    assert "The person asks: What do I do next?" in asked and "Current step:" not in asked
    assert bodies[0]["max_tokens"] == 128 and bodies[-1]["max_tokens"] == 96

    summary = write_report(mixed, tmp_path / "mixed")
    assert summary["question_accuracy"] == 0.5 and summary["questions"] == len(QUESTIONS)
    assert summary["question_accuracy_by_kind"] == q.question_accuracy_by_kind
    rows = [
        json.loads(x)
        for x in (tmp_path / "mixed" / "predictions.jsonl").read_text().split("\n")
        if x
    ]
    question_rows = [r for r in rows if r["type"] == "question"]
    assert len(rows) == len(guidance) + len(QUESTIONS)
    assert [(r["kind"], r["facts"], r["answer"], r["ok"]) for r in question_rows] == [
        (k, f, a, right) for k, _, f, a, right in QUESTIONS
    ]
    report = (tmp_path / "mixed" / "report.md").read_text()
    assert "## Questions" in report and "And after that?" in report  # a wrong answer shown
    assert "What do I do next?" not in report  # a right one is not

    only, _ = asyncio.run(go([questions], q_answers))
    assert only.totals.clips == 0 and only.question_totals.question_accuracy == 0.5
    summary = write_report(only, tmp_path / "only")
    assert summary["clips"] == 0 and summary["next_step_accuracy"] is None
    assert "No guidance records." in (tmp_path / "only" / "report.md").read_text()
    assert not (tmp_path / "only" / "confusion.png").exists()


def test_cli_eval_of_a_local_checkpoint(
    tiny_base: Path, demo_records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_base)]
    args += ["--data", str(demo_records), "--out", str(out), "--limit", "3"]
    code = main(args)
    done = capsys.readouterr()
    assert code == 0, done.err
    data = json.loads((out / "eval.json").read_text())
    assert data["clips"] == 3 and 0.0 <= data["parse_rate"] <= 1.0
    assert data["latency_mean_s"] > 0
    assert "3 clips" in done.out
