"""Question turns from the demo ground truth: kinds, wordings, answers and their facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lavia_live.contract.guidance import TASK_COMPLETE
from lavia_live.contract.tasks import TaskContext, load_task
from training.data.oracle import history_at, oracle_guidance
from training.demo.questions import (
    OUT_OF_SCOPE_ANSWER,
    QUESTION_KINDS,
    demo_questions,
)
from training.demo.render import DemoSpec, plan_demo
from training.eval.metrics import fact_in

TASK_FILE = Path(__file__).resolve().parents[3] / "data" / "tasks" / "demo_oil_change.yaml"
SPEC = DemoSpec(min_step_s=4.0, max_step_s=6.0, narration=False)


@pytest.fixture(scope="module")
def task() -> TaskContext:
    return load_task(TASK_FILE)


def ask(task: TaskContext, seed: int, at_s: float, kind: str, rate: float = 0.0) -> object:
    truth = plan_demo(task, seed, dataclasses.replace(SPEC, mistake_rate=rate))
    (q,) = demo_questions(truth, task, at_s, 1, np.random.default_rng(seed), kinds=[kind])
    return truth, q


def test_every_kind_states_its_facts_and_they_follow_the_truth(task: TaskContext) -> None:
    for seed in range(8):
        truth = plan_demo(task, seed, dataclasses.replace(SPEC, mistake_rate=0.5))
        for at_s in np.linspace(0, truth.duration_s - 0.1, 9):
            frame = round(at_s * truth.fps)
            current, todo = truth.steps_to_do(min(frame, truth.n_frames - 1))
            rng = np.random.default_rng([seed, frame])
            for q in demo_questions(truth, task, float(at_s), 12, rng):
                assert q.kind in QUESTION_KINDS and q.question.strip()
                assert q.facts and all(f.lower() in q.answer.lower() for f in q.facts)
                if q.kind == "current":
                    assert q.facts == (f"step {current + 1}", task.steps[current])
                elif q.kind == "next":
                    expected = oracle_guidance(truth, task, float(at_s)).next_step
                    want = "the task is complete" if expected == TASK_COMPLETE else expected
                    assert q.facts == (want,)
                elif q.kind == "steps_left":
                    count = f"{len(todo)} step" + ("s" if len(todo) > 1 else "")
                    assert q.facts == ((count,) if todo else ("last step",))
                elif q.kind == "how":
                    assert q.facts[0] == task.steps[current] and len(q.facts) == 2
                elif q.kind == "out_of_scope":
                    assert q.answer == OUT_OF_SCOPE_ANSWER
                assert all(fact_in(f, q.answer) for f in q.facts)  # as lavia eval scores


def test_mistake_questions_name_the_mistake_or_say_nothing_was_missed(task: TaskContext) -> None:
    _, q = ask(task, 3, 20.0, "mistakes", rate=0.0)
    assert q.facts == ("nothing was missed",)  # type: ignore[attr-defined]
    found = 0
    for seed in range(20):
        truth = plan_demo(task, seed, dataclasses.replace(SPEC, mistake_rate=1.0))
        start, end, text = truth.mistake_windows()[0]
        middle = (start + end) / 2 / truth.fps
        (q,) = demo_questions(truth, task, middle, 1, np.random.default_rng(0), ["mistakes"])
        assert q.facts == (text,) and q.answer.startswith("Yes")
        found += 1
    assert found == 20


def test_tools_and_unknown_kinds(task: TaskContext) -> None:
    truth = plan_demo(task, 4, SPEC)
    answers = {}
    for span in truth.spans:
        at = (span.start_frame + span.end_frame) / 2 / truth.fps
        (q,) = demo_questions(truth, task, at, 1, np.random.default_rng(1), ["tool"])
        answers[span.step] = q.facts
    assert answers[2] == answers[4] == ("ratchet",) and answers[1] == ("by hand",)
    assert answers[6] == ("dipstick",)
    with pytest.raises(ValueError, match="unknown question kinds"):
        demo_questions(truth, task, 1.0, 1, np.random.default_rng(0), ["weather"])


def test_wordings_vary_and_the_same_seed_gives_the_same_questions(task: TaskContext) -> None:
    truth = plan_demo(task, 9, SPEC)
    a = demo_questions(truth, task, 12.0, 40, np.random.default_rng(5))
    b = demo_questions(truth, task, 12.0, 40, np.random.default_rng(5))
    assert a == b
    assert len({q.kind for q in a}) == len(QUESTION_KINDS)
    assert len({q.question for q in a if q.kind == "next"}) >= 3


def test_history_is_the_guidance_a_session_holds_by_then(task: TaskContext) -> None:
    truth = plan_demo(task, 2, SPEC)
    assert history_at(truth, task, 0.5) == ()  # nothing announced yet
    third = truth.spans[2]
    lines = history_at(truth, task, third.start_frame / truth.fps + 3.0)
    assert len(lines) == 3 and lines[-1].startswith(f"now: {task.steps[third.step]}")
    assert history_at(truth, task, truth.duration_s)[-1].startswith(f"now: {task.steps[6]}")
