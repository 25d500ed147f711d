"""Scoring one answer against a record's ground truth, and the totals over a run.

Guidance answers. For a task with a step list, an answer's current and next step must be
one of the task's steps exactly (case, spacing and a final period aside) or "the task is
complete". An answer that names anything else (an invented step such as "Check the level
with the drain plug.") names a step outside the task: it never passes, neither its current
nor its next step, and :attr:`Totals.steps_outside_task` counts it. The reference is
matched to the step list tolerantly (exactly, else by fuzzy similarity), since annotators
paraphrase. Without a step list (free-text tasks), the answer is compared with the
reference text by fuzzy token-set similarity (>= 85).

Accuracy is also broken down by clip length (:data:`CLIP_BUCKETS`, frames per clip): a
live session's first clips are short, and a model may be good only on full 15-frame clips.
And, where the clips come from demo videos with their ground truth, by how far into its
step the clip ends (:data:`STEP_TIME_BUCKETS`): a clip that ends just after a step change
shows the new step in its last frames only, and that is where a live assistant is late.

Question answers. A question record lists ``facts`` (a step's text, a count, a tool) that a
correct answer contains, every one of them: case and spacing aside, a fact's final period
aside, and as whole words (the fact "3" is not in "13").
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz

from lavia_live.contract.guidance import ParsedGuidance
from lavia_live.contract.tasks import FUZZY_MIN, match_step, normalise_step

OTHER = "(other)"
UNPARSED = "(unparsed)"

CLIP_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1-3", 1, 3),
    ("4-7", 4, 7),
    ("8-11", 8, 11),
    ("12-14", 12, 14),
    ("15", 15, 15),
)
"""Clip-length buckets: name, fewest and most frames (inclusive)."""

STEP_TIME_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0-2 s", 0.0, 2.0),
    ("2-4 s", 2.0, 4.0),
    ("4 s or more", 4.0, float("inf")),
)
"""Buckets of the time from the start of a clip's current step (its ground truth) to the
clip's last frame: name, from (inclusive), to (exclusive)."""


def same_step(predicted: str | None, reference: str, steps: Sequence[str]) -> bool:
    """Whether ``predicted`` names the reference step: exactly one of ``steps`` (or the
    task being complete) when there is a step list, else by fuzzy similarity."""
    if predicted is None:
        return False
    if steps:
        expected = match_step(reference, steps)
        return expected is not None and match_step(predicted, steps, fuzzy=False) == expected
    return fuzz.token_set_ratio(normalise_step(predicted), normalise_step(reference)) >= FUZZY_MIN


def names_step_outside_task(parsed: ParsedGuidance, steps: Sequence[str]) -> bool:
    """Whether an answer's current or next step is text that is none of the task's steps
    (nor "the task is complete"). Always False for free-text tasks and unparsed answers."""
    if not steps:
        return False
    named = [t for t in (parsed.current_step, parsed.next_step) if t is not None]
    return any(match_step(t, steps, fuzzy=False) is None for t in named)


def clip_bucket(frames: int | None) -> str | None:
    """The :data:`CLIP_BUCKETS` name for a clip of ``frames`` frames; None outside them."""
    if frames is None:
        return None
    return next((name for name, lo, hi in CLIP_BUCKETS if lo <= frames <= hi), None)


def step_time_bucket(into_step_s: float | None) -> str | None:
    """The :data:`STEP_TIME_BUCKETS` name for a clip ending ``into_step_s`` seconds after
    its current step began; None when that is unknown."""
    if into_step_s is None:
        return None
    return next((name for name, lo, hi in STEP_TIME_BUCKETS if lo <= into_step_s < hi), None)


@dataclass(frozen=True)
class ClipScore:
    record_id: str
    parsed: bool
    current_ok: bool
    next_ok: bool
    mistake_true: bool
    mistake_predicted: bool
    latency_s: float
    current_label: str  # for the confusion matrix: the reference step
    current_predicted: str  # the predicted step, OTHER or UNPARSED
    outside_task: bool  # the answer names a step that is not one of the task's
    answer: str
    frames: int | None = None  # frames in the clip
    into_step_s: float | None = None  # from its current step's start to its last frame


def score(
    record_id: str,
    parsed: ParsedGuidance,
    reference_current: str,
    reference_next: str,
    reference_warning: str | None,
    steps: Sequence[str],
    latency_s: float,
    *,
    frames: int | None = None,
    into_step_s: float | None = None,
) -> ClipScore:
    outside = names_step_outside_task(parsed, steps)
    predicted_label = UNPARSED
    if parsed.ok:
        named = match_step(parsed.current_step, steps, fuzzy=False) if steps else None
        predicted_label = named or OTHER
    passes = parsed.ok and not outside
    return ClipScore(
        record_id=record_id,
        parsed=parsed.ok,
        current_ok=passes and same_step(parsed.current_step, reference_current, steps),
        next_ok=passes and same_step(parsed.next_step, reference_next, steps),
        mistake_true=reference_warning is not None,
        mistake_predicted=parsed.ok and parsed.warning is not None,
        latency_s=latency_s,
        current_label=(match_step(reference_current, steps) if steps else None) or OTHER,
        current_predicted=predicted_label,
        outside_task=outside,
        answer=parsed.raw,
        frames=frames,
        into_step_s=into_step_s,
    )


@dataclass
class Totals:
    """Guidance scores; the accuracies are None when there are no guidance clips."""

    clips: int = 0
    parse_rate: float | None = None
    current_step_accuracy: float | None = None
    next_step_accuracy: float | None = None
    steps_outside_task: int = 0
    mistake_precision: float | None = None
    mistake_recall: float | None = None
    mistakes_in_reference: int = 0
    latency_mean_s: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    # bucket name -> {"clips", "current_step_accuracy", "next_step_accuracy"}
    by_clip_length: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    next_step_accuracy_worst_bucket: float | None = None
    next_step_worst_bucket: str | None = None  # the bucket's name
    # STEP_TIME_BUCKETS name -> the same; empty when no clip's step start is known
    by_time_into_step: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _by_bucket(
    scores: Sequence[ClipScore], names: Sequence[str], bucket: Callable[[ClipScore], str | None]
) -> dict[str, dict[str, float | int | None]]:
    rows: dict[str, dict[str, float | int | None]] = {}
    for name in names:
        members = [s for s in scores if bucket(s) == name]
        rows[name] = {
            "clips": len(members),
            "current_step_accuracy": _share([s.current_ok for s in members]),
            "next_step_accuracy": _share([s.next_ok for s in members]),
        }
    return rows


def by_clip_length(scores: Sequence[ClipScore]) -> dict[str, dict[str, float | int | None]]:
    """Current- and next-step accuracy per :data:`CLIP_BUCKETS` bucket (None: no clips)."""
    return _by_bucket(scores, [b[0] for b in CLIP_BUCKETS], lambda s: clip_bucket(s.frames))


def by_time_into_step(
    scores: Sequence[ClipScore],
) -> dict[str, dict[str, float | int | None]]:
    """Current- and next-step accuracy per :data:`STEP_TIME_BUCKETS` bucket, over the clips
    whose step start is known; empty when none is."""
    if all(s.into_step_s is None for s in scores):
        return {}
    return _by_bucket(
        scores, [b[0] for b in STEP_TIME_BUCKETS], lambda s: step_time_bucket(s.into_step_s)
    )


def totals(scores: Sequence[ClipScore]) -> Totals:
    n = len(scores)
    if n == 0:
        return Totals()
    tp = sum(s.mistake_true and s.mistake_predicted for s in scores)
    predicted = sum(s.mistake_predicted for s in scores)
    actual = sum(s.mistake_true for s in scores)
    latencies = sorted(s.latency_s for s in scores)
    confusion: dict[str, Counter[str]] = {}
    for s in scores:
        confusion.setdefault(s.current_label, Counter())[s.current_predicted] += 1
    buckets = by_clip_length(scores)
    filled = [(name, row["next_step_accuracy"]) for name, row in buckets.items() if row["clips"]]
    worst = min(filled, key=lambda item: float(item[1] or 0.0), default=(None, None))
    return Totals(
        clips=n,
        parse_rate=sum(s.parsed for s in scores) / n,
        current_step_accuracy=sum(s.current_ok for s in scores) / n,
        next_step_accuracy=sum(s.next_ok for s in scores) / n,
        steps_outside_task=sum(s.outside_task for s in scores),
        mistake_precision=tp / predicted if predicted else None,
        mistake_recall=tp / actual if actual else None,
        mistakes_in_reference=actual,
        latency_mean_s=statistics.fmean(latencies),
        latency_p50_s=latencies[n // 2],
        latency_p95_s=latencies[min(n - 1, int(0.95 * n))],
        by_clip_length=buckets,
        next_step_accuracy_worst_bucket=None if worst[1] is None else float(worst[1]),
        next_step_worst_bucket=worst[0],
        by_time_into_step=by_time_into_step(scores),
        confusion={k: dict(v) for k, v in confusion.items()},
    )


# -- questions ------------------------------------------------------------------------


def _normalise_text(text: str) -> str:
    return " ".join(text.lower().split())


def fact_in(fact: str, answer: str) -> bool:
    """Whether ``answer`` states ``fact``: case and spacing aside, the fact's final period
    aside, as whole words at the fact's ends."""
    key = normalise_step(fact)
    if not key:
        return True
    pattern = re.escape(key)
    if key[0].isalnum():
        pattern = r"(?<!\w)" + pattern
    if key[-1].isalnum():
        pattern += r"(?!\w)"
    return re.search(pattern, _normalise_text(answer)) is not None


@dataclass(frozen=True)
class QuestionScore:
    record_id: str
    kind: str
    question: str
    facts: tuple[str, ...]
    answer: str
    ok: bool | None  # every fact stated; None: the record lists no facts (not scored)
    missing: tuple[str, ...]  # the facts the answer does not state
    latency_s: float


def score_question(
    record_id: str,
    kind: str,
    question: str,
    facts: Sequence[str],
    answer: str,
    latency_s: float,
) -> QuestionScore:
    missing = tuple(f for f in facts if not fact_in(f, answer))
    return QuestionScore(
        record_id=record_id,
        kind=kind,
        question=question,
        facts=tuple(facts),
        answer=answer,
        ok=(not missing) if facts else None,
        missing=missing,
        latency_s=latency_s,
    )


@dataclass
class QuestionTotals:
    """Question scores; accuracies are over the questions that list facts (None: none)."""

    questions: int = 0
    question_accuracy: float | None = None
    questions_without_facts: int = 0
    question_accuracy_by_kind: dict[str, float | None] = field(default_factory=dict)
    questions_by_kind: dict[str, int] = field(default_factory=dict)


def question_totals(scores: Sequence[QuestionScore]) -> QuestionTotals:
    kinds = sorted({s.kind for s in scores})
    scored = [s for s in scores if s.ok is not None]
    return QuestionTotals(
        questions=len(scores),
        question_accuracy=_share([bool(s.ok) for s in scored]),
        questions_without_facts=len(scores) - len(scored),
        question_accuracy_by_kind={
            k: _share([bool(s.ok) for s in scored if s.kind == k]) for k in kinds
        },
        questions_by_kind={k: sum(s.kind == k for s in scores) for k in kinds},
    )
