"""The step tracker: the task's progress, and when the assistant speaks.

The model answers for every clip; the tracker, not the model, decides what the person is
told. It matches each answer to the task's steps (:func:`~lavia_live.contract.tasks.
match_step`), and announces a new current/next step only when ``confirm`` answers in a row
agree on it (a step the model reports once amid steady others is not announced). That holds
for a session's first step too: the first answers come from the shortest clips, the ones a
model gets wrong most, and a wrong first step is announced with the warnings its correction
brings ("Back at step 1"). It keeps
which steps are done, and warns from the sequence itself: a step skipped (the current step
jumps forward over steps never seen), a step undone (it goes back to a step already done)
or steps out of order (it goes back to an earlier step not done yet). A warning the model
gives is announced like a step change, after ``confirm`` answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lavia_live.contract.guidance import TASK_COMPLETE, ParsedGuidance
from lavia_live.contract.prompt import HISTORY_LINES, history_line
from lavia_live.contract.tasks import COMPLETE, TaskContext, match_step


@dataclass(frozen=True)
class Announcement:
    """What the person is told: the tracker's view after an answer changed it."""

    current_step: str
    next_step: str
    warning: str | None
    current_index: int | None  # 0-based; None: an answer outside the step list
    next_index: int | None  # None: the task is complete (or outside the list)
    done: tuple[int, ...]


@dataclass(frozen=True)
class _Reading:
    """One answer, matched to the step list."""

    current: int | None
    next: int | None  # -1: the task is complete
    current_text: str
    next_text: str
    warning: str | None

    @property
    def key(self) -> tuple[object, ...]:
        steps = (self.current, self.next) if self.current is not None else (self.current_text,)
        return (*steps, self.warning is not None)


@dataclass
class StepTracker:
    task: TaskContext
    confirm: int = 2
    _candidate: _Reading | None = None
    _streak: int = 0
    _announced: Announcement | None = None
    _seen: set[int] = field(default_factory=set)  # steps any answer named as current
    _done: set[int] = field(default_factory=set)
    _history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.confirm < 1:
            raise ValueError(f"confirm must be >= 1, got {self.confirm}")

    @property
    def announced(self) -> Announcement | None:
        return self._announced

    @property
    def done(self) -> tuple[int, ...]:
        return tuple(sorted(self._done))

    def history(self, last: int = HISTORY_LINES) -> Sequence[str]:
        """The latest announcements as short lines, oldest first (for the question prompt)."""
        return tuple(self._history[-last:])

    def reset(self, task: TaskContext | None = None) -> None:
        """Forget all progress (a new attempt, or another task)."""
        self.task = task or self.task
        self._candidate, self._streak, self._announced = None, 0, None
        self._seen.clear()
        self._done.clear()
        self._history.clear()

    def update(self, parsed: ParsedGuidance) -> Announcement | None:
        """Take one model answer; return what to announce, or None to stay quiet."""
        if parsed.current_step is None:
            return None  # unparsed or half an answer: nothing to go on
        reading = self._read(parsed)
        if reading.current is not None and reading.current >= 0:
            # Named once is enough to not call it skipped: a slow model may never confirm a
            # short step that the person did do.
            self._seen.add(reading.current)
        if self._candidate is not None and self._candidate.key == reading.key:
            self._streak += 1
        else:
            self._candidate, self._streak = reading, 1
        if self._streak < self.confirm:
            return None
        return self._announce(reading)

    def _read(self, parsed: ParsedGuidance) -> _Reading:
        steps = self.task.steps
        current_text = parsed.current_step or ""
        next_text = parsed.next_step or ""
        current = _index(match_step(current_text, steps), steps)
        nxt = _index(match_step(next_text, steps), steps) if next_text else None
        if current is not None:
            current_text = steps[current]
        if nxt == -1:
            next_text = TASK_COMPLETE
        elif nxt is not None:
            next_text = steps[nxt]
        return _Reading(current, nxt, current_text, next_text, parsed.warning)

    def _announce(self, reading: _Reading) -> Announcement | None:
        previous = self._announced
        warning = reading.warning or self._sequence_warning(reading.current)
        if reading.current is not None and previous is not None:
            before = previous.current_index
            if before is not None and reading.current > before:
                # The step left, and any in between that an answer named, are done.
                self._done |= {before} | {
                    i for i in range(before, reading.current) if i in self._seen
                }
            elif before is not None and reading.current < before:
                self._done -= {i for i in self._done if i >= reading.current}
        announcement = Announcement(
            current_step=reading.current_text,
            next_step=reading.next_text,
            warning=warning,
            current_index=reading.current if reading.current != -1 else None,
            next_index=reading.next if reading.next not in (None, -1) else None,
            done=self.done,
        )
        same = previous is not None and (
            previous.current_step,
            previous.next_step,
            previous.warning,
        ) == (announcement.current_step, announcement.next_step, announcement.warning)
        self._announced = announcement
        if same:
            return None
        self._history.append(
            history_line(announcement.current_step, announcement.next_step, warning)
        )
        return announcement

    def _sequence_warning(self, current: int | None) -> str | None:
        previous = self._announced
        if current is None or current == -1 or previous is None:
            return None
        before = previous.current_index
        if before is None or current == before:
            return None
        steps = self.task.steps
        if current > before + 1:
            skipped = [i for i in range(before + 1, current) if i not in self._seen]
            if skipped:
                names = "; ".join(f"step {i + 1} ({steps[i].rstrip('.')})" for i in skipped)
                return f"Skipped {names}."
        if current < before:
            step = steps[current].rstrip(".")
            if current in self._done:
                return f"Back at step {current + 1} ({step}), which was already done."
            later = steps[before].rstrip(".")
            return (
                f"Out of order: step {current + 1} ({step}) comes before "
                f"step {before + 1} ({later})."
            )
        return None


def _index(matched: str | None, steps: Sequence[str]) -> int | None:
    """0-based index of a matched step, -1 for the task being complete, None for neither."""
    if matched is None:
        return None
    if matched == COMPLETE:
        return -1
    return list(steps).index(matched)
