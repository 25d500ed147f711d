"""Scoring one answer against a record's ground truth, and the totals over a run.

A step answer is matched to the task's step list: exactly (case, spacing and a final
period aside), else by fuzzy similarity to the closest step (token-set ratio >= 85);
"the task is complete" is a step of its own. Without a step list (free-text tasks), the
answer is compared with the reference text by the same fuzzy ratio.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz

from lavia_live.contract.guidance import ParsedGuidance
from lavia_live.contract.tasks import FUZZY_MIN, match_step, normalise_step

OTHER = "(other)"
UNPARSED = "(unparsed)"


def same_step(predicted: str | None, reference: str, steps: Sequence[str]) -> bool:
    if predicted is None:
        return False
    if steps:
        expected = match_step(reference, steps)
        return expected is not None and match_step(predicted, steps) == expected
    return fuzz.token_set_ratio(normalise_step(predicted), normalise_step(reference)) >= FUZZY_MIN


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
    current_predicted: str  # the matched predicted step, OTHER or UNPARSED
    answer: str


def score(
    record_id: str,
    parsed: ParsedGuidance,
    reference_current: str,
    reference_next: str,
    reference_warning: str | None,
    steps: Sequence[str],
    latency_s: float,
) -> ClipScore:
    if not parsed.ok:
        predicted_label = UNPARSED
    else:
        predicted_label = (match_step(parsed.current_step, steps) if steps else None) or OTHER
    return ClipScore(
        record_id=record_id,
        parsed=parsed.ok,
        current_ok=parsed.ok and same_step(parsed.current_step, reference_current, steps),
        next_ok=parsed.ok and same_step(parsed.next_step, reference_next, steps),
        mistake_true=reference_warning is not None,
        mistake_predicted=parsed.ok and parsed.warning is not None,
        latency_s=latency_s,
        current_label=(match_step(reference_current, steps) if steps else None) or OTHER,
        current_predicted=predicted_label,
        answer=parsed.raw,
    )


@dataclass
class Totals:
    clips: int = 0
    parse_rate: float = 0.0
    current_step_accuracy: float = 0.0
    next_step_accuracy: float = 0.0
    mistake_precision: float | None = None
    mistake_recall: float | None = None
    mistakes_in_reference: int = 0
    latency_mean_s: float = 0.0
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)


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
    return Totals(
        clips=n,
        parse_rate=sum(s.parsed for s in scores) / n,
        current_step_accuracy=sum(s.current_ok for s in scores) / n,
        next_step_accuracy=sum(s.next_ok for s in scores) / n,
        mistake_precision=tp / predicted if predicted else None,
        mistake_recall=tp / actual if actual else None,
        mistakes_in_reference=actual,
        latency_mean_s=statistics.fmean(latencies),
        latency_p50_s=latencies[n // 2],
        latency_p95_s=latencies[min(n - 1, int(0.95 * n))],
        confusion={k: dict(v) for k, v in confusion.items()},
    )
