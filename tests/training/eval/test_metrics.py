"""The scoring rules on hand-made answers: strict step names, clip-length buckets, time
into the step, and question answers checked against their facts."""

from __future__ import annotations

import pytest

from lavia_live.contract.guidance import TASK_COMPLETE, Guidance, parse_guidance
from lavia_live.contract.tasks import COMPLETE, TaskLibrary, match_step
from training.eval.metrics import (
    OTHER,
    clip_bucket,
    fact_in,
    names_step_outside_task,
    question_totals,
    score,
    score_question,
    step_time_bucket,
    totals,
)

STEPS = TaskLibrary.load().require("demo_oil_change").steps
INVENTED = "Loosen the drain plug with the dipstick."  # fuzzily step 3, but not a step


def _answer(current: str, nxt: str) -> object:
    return parse_guidance(Guidance(current, nxt).to_text())


def test_strict_matching_leaves_the_trackers_fuzzy_matching_alone() -> None:
    assert match_step(INVENTED, STEPS) == STEPS[2]  # the tracker still reads it as step 3
    assert match_step(INVENTED, STEPS, fuzzy=False) is None
    assert match_step("  refit AND tighten the drain plug ", STEPS, fuzzy=False) == STEPS[4]
    assert match_step(TASK_COMPLETE.upper(), STEPS, fuzzy=False) == COMPLETE
    assert match_step("loosen the drain plug using the ratchet", STEPS, fuzzy=False) is None


def test_an_answer_naming_a_step_outside_the_task_never_passes() -> None:
    exact = _answer(STEPS[5].lower().rstrip("."), STEPS[6])
    invented_next = _answer(STEPS[5], INVENTED)
    invented_current = _answer(INVENTED, TASK_COMPLETE)
    scores = [
        score("exact", exact, STEPS[5], STEPS[6], None, STEPS, 0.1),
        score("next", invented_next, STEPS[5], STEPS[6], None, STEPS, 0.1),
        score("current", invented_current, STEPS[6], TASK_COMPLETE, None, STEPS, 0.1),
    ]
    assert [(s.current_ok, s.next_ok, s.outside_task) for s in scores] == [
        (True, True, False),
        (False, False, True),  # its current step is right, but the answer invents a step
        (False, False, True),
    ]
    assert scores[2].current_predicted == OTHER
    t = totals(scores)
    assert t.steps_outside_task == 2
    assert t.current_step_accuracy == pytest.approx(1 / 3)
    assert t.next_step_accuracy == pytest.approx(1 / 3)


def test_a_paraphrased_reference_still_matches_the_exact_answer() -> None:
    answer = _answer(STEPS[2], STEPS[3])
    s = score("a", answer, "loosen the drain plug using the ratchet", STEPS[3], None, STEPS, 0.1)
    assert s.current_ok and s.next_ok


def test_free_text_tasks_keep_the_fuzzy_comparison() -> None:
    answer = _answer("Whisk the eggs in a bowl", "Heat the pan")
    s = score("f", answer, "Whisk the eggs in the bowl.", "Heat the pan.", None, (), 0.1)
    assert s.current_ok and s.next_ok and not s.outside_task
    assert not names_step_outside_task(answer, ())  # type: ignore[arg-type]
    assert not names_step_outside_task(parse_guidance("???"), STEPS)


def test_clip_length_buckets_and_the_worst_one() -> None:
    assert [clip_bucket(n) for n in (1, 3, 4, 7, 8, 11, 12, 14, 15)] == [
        "1-3", "1-3", "4-7", "4-7", "8-11", "8-11", "12-14", "12-14", "15",
    ]  # fmt: skip
    assert clip_bucket(0) is None and clip_bucket(16) is None and clip_bucket(None) is None
    good = _answer(STEPS[1], STEPS[2])
    wrong_next = _answer(STEPS[1], STEPS[4])
    scores = [
        score("a", good, STEPS[1], STEPS[2], None, STEPS, 0.1, frames=2),
        score("b", wrong_next, STEPS[1], STEPS[2], None, STEPS, 0.1, frames=3),
        score("c", good, STEPS[1], STEPS[2], None, STEPS, 0.1, frames=15),
        score("d", wrong_next, STEPS[1], STEPS[2], None, STEPS, 0.1, frames=9),
        score("e", good, STEPS[1], STEPS[2], None, STEPS, 0.1, frames=10),
    ]
    t = totals(scores)
    assert t.by_clip_length["1-3"] == {
        "clips": 2, "current_step_accuracy": 1.0, "next_step_accuracy": 0.5,
    }  # fmt: skip
    assert t.by_clip_length["8-11"]["next_step_accuracy"] == 0.5
    assert t.by_clip_length["4-7"] == {
        "clips": 0, "current_step_accuracy": None, "next_step_accuracy": None,
    }  # fmt: skip
    assert t.by_clip_length["15"]["next_step_accuracy"] == 1.0
    assert t.next_step_accuracy_worst_bucket == 0.5
    assert t.next_step_worst_bucket == "1-3"  # the first of the tied worst, shortest first


def test_time_into_the_step_buckets() -> None:
    assert [step_time_bucket(s) for s in (0.0, 1.99, 2.0, 3.9, 4.0, 60.0)] == [
        "0-2 s", "0-2 s", "2-4 s", "2-4 s", "4 s or more", "4 s or more",
    ]  # fmt: skip
    assert step_time_bucket(None) is None and step_time_bucket(-0.5) is None
    good = _answer(STEPS[5], STEPS[6])
    late = _answer(STEPS[4], STEPS[5])  # still the step before: a change not yet seen
    scores = [
        score("a", late, STEPS[5], STEPS[6], None, STEPS, 0.1, into_step_s=0.2),
        score("b", good, STEPS[5], STEPS[6], None, STEPS, 0.1, into_step_s=1.5),
        score("c", good, STEPS[5], STEPS[6], None, STEPS, 0.1, into_step_s=6.0),
        score("d", late, STEPS[5], STEPS[6], None, STEPS, 0.1),  # no ground truth: left out
    ]
    t = totals(scores)
    assert t.by_time_into_step["0-2 s"] == {
        "clips": 2, "current_step_accuracy": 0.5, "next_step_accuracy": 0.5,
    }  # fmt: skip
    assert t.by_time_into_step["2-4 s"]["clips"] == 0
    assert t.by_time_into_step["4 s or more"]["current_step_accuracy"] == 1.0
    assert totals(scores[3:]).by_time_into_step == {}  # none known: no breakdown


def test_no_guidance_clips_leave_the_accuracies_unset() -> None:
    t = totals([])
    assert t.clips == 0 and t.next_step_accuracy is None and t.next_step_worst_bucket is None


def test_facts_match_case_spacing_and_final_period_aside_as_whole_words() -> None:
    answer = "You are now at step 3:  loosen the DRAIN plug\nwith the ratchet. 4 steps are left."
    assert fact_in("Loosen the drain plug with the ratchet.", answer)
    assert fact_in("4", answer)
    assert not fact_in("13", answer)
    assert not fact_in("1", "11 steps are left")
    assert not fact_in("ratchets", answer)
    assert fact_in(
        "I can only help with the demo task's steps", "I can only help with the demo task's steps."
    )


def test_question_scores_by_kind() -> None:
    scores = [
        score_question("q1", "next", "What next?", [STEPS[3]], f"Next: {STEPS[3]}", 0.2),
        score_question("q2", "next", "And then?", [STEPS[4]], f"Next: {STEPS[3]}", 0.2),
        score_question(
            "q3", "steps_left", "How many left?", ["2", STEPS[5]], f"2 left: {STEPS[5]}", 0.2
        ),
        score_question("q4", "steps_left", "How many left?", ["2", STEPS[5]], "2 left", 0.2),
        score_question("q5", "tool", "What tool?", [], "A ratchet.", 0.2),
    ]
    assert [s.ok for s in scores] == [True, False, True, False, None]
    assert scores[3].missing == (STEPS[5],)
    q = question_totals(scores)
    assert q.questions == 5 and q.questions_without_facts == 1
    assert q.question_accuracy == 0.5
    assert q.question_accuracy_by_kind == {"next": 0.5, "steps_left": 0.5, "tool": None}
    assert q.questions_by_kind == {"next": 2, "steps_left": 2, "tool": 1}
    assert question_totals([]).question_accuracy is None
