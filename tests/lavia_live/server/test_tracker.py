"""The step tracker: announces changes only, smooths one-off answers, warns on sequence."""

from __future__ import annotations

import pytest

from lavia_live.contract.guidance import TASK_COMPLETE, Guidance, parse_guidance
from lavia_live.contract.prompt import history_line
from lavia_live.contract.tasks import TaskContext
from lavia_live.server.tracker import Announcement, StepTracker

TASK = TaskContext(
    "t", "Test task", ("Open the lid.", "Pour the water.", "Close the lid.", "Press start.")
)


def answer(current: int, warning: str | None = None, *, text: str | None = None) -> object:
    steps = TASK.steps
    nxt = steps[current + 1] if current + 1 < len(steps) else TASK_COMPLETE
    return parse_guidance(Guidance(text or steps[current], nxt, warning).to_text())


def feed(tracker: StepTracker, *currents: int) -> list[Announcement | None]:
    return [tracker.update(answer(c)) for c in currents]  # type: ignore[arg-type]


def test_only_confirmed_steps_are_announced_the_first_one_too() -> None:
    tracker = StepTracker(TASK, confirm=2)
    out = feed(tracker, 0, 0, 0, 1, 1, 1)
    assert [a is not None for a in out] == [False, True, False, False, True, False]
    assert out[1] is not None and (out[1].current_index, out[1].next_index) == (0, 1)
    assert out[4] is not None and out[4].current_step == "Pour the water." and out[4].done == (0,)
    # a session's first answers disagree: nothing is said until two agree, and no warning
    tracker = StepTracker(TASK, confirm=2)
    out = feed(tracker, 2, 0, 0)
    assert out[:2] == [None, None] and out[2] is not None
    assert (out[2].current_index, out[2].warning) == (0, None)
    assert feed(StepTracker(TASK, confirm=1), 2)[0] is not None  # confirm=1: at once


def test_a_one_off_answer_amid_steady_ones_is_not_announced() -> None:
    tracker = StepTracker(TASK, confirm=2)
    out = feed(tracker, 1, 1, 3, 1, 1, 2, 2)
    announced = [a.current_index for a in out if a is not None]
    assert announced == [1, 2]


def test_skipped_step_is_warned_and_not_marked_done() -> None:
    tracker = StepTracker(TASK, confirm=1)
    feed(tracker, 0, 1)
    (jump,) = feed(tracker, 3)
    assert jump is not None and jump.warning is not None
    assert jump.warning == "Skipped step 3 (Close the lid)."
    assert jump.done == (0, 1)


def test_a_step_named_once_but_never_confirmed_is_not_called_skipped() -> None:
    """A slow model may see a short step only once; the person still did it."""
    tracker = StepTracker(TASK, confirm=2)
    feed(tracker, 0, 0, 1, 2, 2)
    announced = [a for a in (tracker.announced,) if a is not None]
    assert announced[0].current_index == 2 and announced[0].warning is None
    assert announced[0].done == (0, 1)


def test_going_back_to_a_done_step_is_warned_and_undoes_later_steps() -> None:
    tracker = StepTracker(TASK, confirm=1)
    feed(tracker, 0, 1, 2)
    (back,) = feed(tracker, 0)
    assert back is not None and back.warning is not None and "already done" in back.warning
    assert back.done == ()


def test_model_warning_needs_confirmation_like_a_step() -> None:
    tracker = StepTracker(TASK, confirm=2)
    feed(tracker, 1)
    assert tracker.update(answer(1, "Water is spilling.")) is None  # type: ignore[arg-type]
    again = tracker.update(answer(1, "Water is spilling."))  # type: ignore[arg-type]
    assert again is not None and again.warning == "Water is spilling."


def test_fuzzy_step_names_map_to_the_list_and_unknown_steps_keep_their_text() -> None:
    tracker = StepTracker(TASK, confirm=1)
    (a,) = [tracker.update(answer(1, text="pour the water"))]  # type: ignore[arg-type]
    assert a is not None and a.current_index == 1 and a.current_step == "Pour the water."
    (b,) = [tracker.update(answer(1, text="Juggle three oranges."))]  # type: ignore[arg-type]
    assert b is not None and b.current_index is None and b.current_step == "Juggle three oranges."


def test_last_step_completes_the_task_and_unparsed_answers_change_nothing() -> None:
    tracker = StepTracker(TASK, confirm=1)
    feed(tracker, 0, 1, 2)
    (last,) = feed(tracker, 3)
    assert last is not None and last.next_index is None and last.next_step == TASK_COMPLETE
    assert last.done == (0, 1, 2)  # the last step is under way, not done
    assert tracker.update(parse_guidance("I see a kitchen.")) is None
    assert tracker.announced == last


def test_reset_forgets_progress_and_history() -> None:
    tracker = StepTracker(TASK, confirm=1)
    feed(tracker, 0, 1)
    assert len(tracker.history()) == 2
    tracker.reset()
    assert tracker.announced is None and tracker.done == () and not tracker.history()
    with pytest.raises(ValueError):
        StepTracker(TASK, confirm=0)


def test_an_earlier_step_not_done_yet_is_warned_as_out_of_order() -> None:
    """The person started at step 3 (say, loosening the plug with no pan under it), then
    went back to step 1: the sequence itself says the steps were out of order."""
    tracker = StepTracker(TASK, confirm=1)
    (first,) = feed(tracker, 2)
    assert first is not None and first.warning is None  # a session may start mid-task
    (back,) = feed(tracker, 0)
    assert back is not None and back.warning is not None
    assert (
        back.warning == "Out of order: step 1 (Open the lid) comes before step 3 (Close the lid)."
    )
    assert back.done == ()
    (on,) = feed(tracker, 1)
    assert on is not None and on.warning is None


def test_history_lines_are_the_contract_format_and_bounded() -> None:
    tracker = StepTracker(TASK, confirm=1)
    feed(tracker, 0, 1, 2, 3)
    assert tracker.history() == (
        history_line("Pour the water.", "Close the lid."),
        history_line("Close the lid.", "Press start."),
        history_line("Press start.", TASK_COMPLETE),
    )
