"""Questions a person asks mid-task, with answers from a demo video's ground truth.

The demo dataset carries question turns beside the guidance: for a clip ending at time t,
:func:`demo_questions` picks questions in varied wordings (what to do now or next, which
step this is, how many steps are left, whether anything was missed or done wrong, what a
step needs, how to go on in the person's own words) and answers each from the truth at t,
naming the facts a correct answer must state (the step's text, the count, the tool) so
``lavia eval`` can score answers. A share of the questions are ones the demo cannot answer
(the weather, another task); they get an honest short answer, :data:`OUT_OF_SCOPE_ANSWER`.

Answers use a small fixed phrasing per kind, so a tiny model can learn them; the wording
of the questions varies (templates, casing, punctuation) so it learns the intent. Each
answer's first words say what kind of answer it is; where it names a step, the step's text
comes next, after one of the contract's labels (which in-process engines hold to the task's
steps), and what follows from the step (its number, the count left, the tool) after it:
"You are on: Loosen the drain plug with the ratchet. It is step 3 of 7." A small model names
a step far more reliably than it counts, and the count follows from the name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lavia_live.contract.guidance import (
    CURRENT_LABEL,
    HOW_LABEL,
    LEFT_LABEL,
    NEXT_LABEL,
    SKIPPED_LABEL,
    TASK_COMPLETE,
    TOOL_LABEL,
)
from lavia_live.contract.tasks import TaskContext
from training.demo.render import DemoTruth

__all__ = [
    "OUT_OF_SCOPE_ANSWER",
    "QUESTION_KINDS",
    "DemoQuestion",
    "demo_questions",
]

OUT_OF_SCOPE_ANSWER = "I can only help with the demo task's steps."

# What each of the seven demo steps needs (the scene draws these objects).
_TOOLS = (
    "the oil pan",
    None,  # by hand
    "the ratchet",
    "the oil pan",
    "the ratchet",
    "the bottle of new oil",
    "the dipstick",
)

_WORDINGS: dict[str, tuple[str, ...]] = {
    "current": (
        "What am I doing right now?",
        "Which step is this?",
        "What step am I on?",
        "Where am I in the task?",
        "What is this step?",
        "Which step am I doing?",
    ),
    "next": (
        "What do I do next?",
        "What's the next step?",
        "What comes after this?",
        "What should I do after this step?",
        "And then?",
        "What now, once this is done?",
    ),
    "steps_left": (
        "How many steps are left?",
        "How many steps to go?",
        "How much is left to do?",
        "How many more steps after this one?",
        "Am I nearly done?",
    ),
    "mistakes": (
        "Did I miss anything?",
        "Have I done anything wrong?",
        "Any mistakes so far?",
        "Is everything going okay?",
        "Did I skip a step?",
        "Am I doing this right?",
    ),
    "tool": (
        "What do I need for this step?",
        "Which tool do I use now?",
        "What should I be holding for this?",
        "Do I need a tool for this?",
        "What tool is this step?",
    ),
    # How to go on, asked in the person's own words: answered with the step at hand.
    "how": (
        "How do I do this?",
        "How do I do this step?",
        "Can you walk me through this?",
        "What exactly do I do here?",
        "How does this part go?",
        "Explain this step to me.",
        "How do I get the drain plug out?",
        "How do I use the ratchet here?",
        "How do I deal with the oil?",
        "What's the right way to do this on the engine?",
        "Help me with this, I'm stuck.",
        "Can you remind me how this goes?",
    ),
    "out_of_scope": (
        "What's the weather like today?",
        "Can you order more oil for me?",
        "How do I bake bread?",
        "Tell me a joke.",
        "Who won the game last night?",
        "How do I change a car tyre?",
        "What time is it?",
        "Can you play some music?",
    ),
}
QUESTION_KINDS = tuple(_WORDINGS)


@dataclass(frozen=True)
class DemoQuestion:
    kind: str
    question: str
    answer: str
    facts: tuple[str, ...]  # what a correct answer must state


@dataclass(frozen=True)
class _Now:
    """The ground truth at one moment, in the terms answers use."""

    task: TaskContext
    current: int
    pending: tuple[int, ...]  # steps still to do besides the current one, in order
    skipped: tuple[int, ...]  # steps before the current one never done
    mistake: str | None

    def step(self, i: int) -> str:
        return self.task.steps[i]


def _now(truth: DemoTruth, task: TaskContext, frame: int) -> _Now:
    current, pending = truth.steps_to_do(frame)
    return _Now(task, current, pending, truth.skipped_before(frame), truth.mistake_at(frame))


def _current(now: _Now) -> tuple[str, tuple[str, ...]]:
    n, total = now.current + 1, len(now.task.steps)
    name = now.step(now.current)
    return f"{CURRENT_LABEL} {name} It is step {n} of {total}.", (f"step {n}", name)


def _next(now: _Now) -> tuple[str, tuple[str, ...]]:
    if not now.pending:
        return f"{NEXT_LABEL} {TASK_COMPLETE} This is the last step.", ("the task is complete",)
    step = now.step(now.pending[0])
    return f"{NEXT_LABEL} {step}", (step,)


def _steps_left(now: _Now) -> tuple[str, tuple[str, ...]]:
    left, head = len(now.pending), f"{LEFT_LABEL} {now.step(now.current)}"
    if left == 0:
        return f"{head} None: it is the last step.", ("last step",)
    count = f"{left} step" if left == 1 else f"{left} steps"
    return f"{head} {count}.", (count,)


def _mistakes(now: _Now) -> tuple[str, tuple[str, ...]]:
    if now.mistake is not None:
        return f"Yes: {now.mistake}", (now.mistake,)
    if now.skipped:
        i = now.skipped[0]
        return f"Yes: {SKIPPED_LABEL} {now.step(i)} It was step {i + 1}.", (
            f"step {i + 1}",
            now.step(i),
        )
    return "No, nothing was missed so far.", ("nothing was missed",)


def _tool(now: _Now) -> tuple[str, tuple[str, ...]]:
    tool, head = _TOOLS[now.current], f"{TOOL_LABEL} {now.step(now.current)}"
    if tool is None:
        return f"{head} No tool: do it by hand.", ("by hand",)
    return f"{head} You need {tool}.", (tool.removeprefix("the "),)


def _how(now: _Now) -> tuple[str, tuple[str, ...]]:
    tool, step = _TOOLS[now.current], now.step(now.current)
    if tool is None:
        return f"{HOW_LABEL} {step} Do it by hand.", (step, "by hand")
    return f"{HOW_LABEL} {step} You need {tool}.", (step, tool.removeprefix("the "))


def _out_of_scope(now: _Now) -> tuple[str, tuple[str, ...]]:
    return OUT_OF_SCOPE_ANSWER, (OUT_OF_SCOPE_ANSWER.rstrip("."),)


_ANSWERS: dict[str, Callable[[_Now], tuple[str, tuple[str, ...]]]] = {
    "current": _current,
    "next": _next,
    "steps_left": _steps_left,
    "mistakes": _mistakes,
    "tool": _tool,
    "how": _how,
    "out_of_scope": _out_of_scope,
}


def _vary(question: str, rng: np.random.Generator) -> str:
    """The way people type or a recogniser writes: lower case, no final punctuation."""
    if rng.random() < 0.3:
        question = question.lower()
    if rng.random() < 0.3:
        question = question.rstrip("?.!")
    return question


def demo_questions(
    truth: DemoTruth,
    task: TaskContext,
    at_s: float,
    count: int,
    rng: np.random.Generator,
    kinds: Sequence[str] = QUESTION_KINDS,
) -> list[DemoQuestion]:
    """``count`` questions (kinds drawn from ``kinds``) answered for the moment ``at_s``."""
    unknown = set(kinds) - set(QUESTION_KINDS)
    if unknown:
        raise ValueError(f"unknown question kinds {sorted(unknown)}; known: {QUESTION_KINDS}")
    frame = truth.frame_at(at_s)
    now = _now(truth, task, frame)
    out = []
    for _ in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        wordings = _WORDINGS[kind]
        question = _vary(wordings[int(rng.integers(len(wordings)))], rng)
        answer, facts = _ANSWERS[kind](now)
        out.append(DemoQuestion(kind, question, answer, facts))
    return out
