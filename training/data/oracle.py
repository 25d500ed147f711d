"""The oracle annotator: guidance from a demo video's ground truth, no API call.

It plugs into the same :class:`~training.data.annotate.Annotator` interface as the VLM
annotators, so ``lavia data build DIR --annotator oracle`` turns rendered demo videos into
a training set fully offline, through the real transcription and clip code.

For a clip, the step in progress at its last frame is the current step; the next step is
the first step of the task still to do (while a mistake shows: the step it left undone,
such as the pan or the drain plug), or "the task is complete"; a recorded mistake is the
warning while it shows (its ``frame`` to ``end_frame``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lavia_live.contract.guidance import TASK_COMPLETE, Guidance
from lavia_live.contract.prompt import HISTORY_LINES, history_line
from lavia_live.contract.tasks import TaskContext
from training.data.annotate import AnnotationError, AnnotationRequest, AnnotationResult
from training.data.manifest import truth_path
from training.demo.questions import DemoQuestion, demo_questions
from training.demo.render import DemoTruth

_ANNOUNCED_AFTER_S = 2.0


def load_truth(video: Path) -> DemoTruth:
    path = truth_path(video)
    try:
        return DemoTruth.from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise AnnotationError(
            f"{video}: no ground truth for the oracle ({path}: {exc.strerror})"
        ) from exc
    except ValueError as exc:
        raise AnnotationError(f"{path}: unreadable ground truth: {exc}") from exc


@dataclass(frozen=True)
class AskedQuestion:
    question: DemoQuestion
    history: tuple[str, ...]  # earlier guidance lines in the question prompt


def history_at(truth: DemoTruth, task: TaskContext, at_s: float) -> tuple[str, ...]:
    """The earlier-guidance lines a live session would hold at ``at_s`` if every step had
    been announced 2 s after it began: one line per span begun by then, the last
    :data:`HISTORY_LINES`."""
    lines = []
    for span in truth.spans:
        said_at = span.start_frame / truth.fps + _ANNOUNCED_AFTER_S
        if said_at > at_s:
            break
        g = oracle_guidance(truth, task, min(said_at, (span.end_frame - 1) / truth.fps))
        lines.append(history_line(g.current_step, g.next_step, g.warning))
    return tuple(lines[-HISTORY_LINES:])


def oracle_guidance(truth: DemoTruth, task: TaskContext, at_s: float) -> Guidance:
    """The guidance that is true at ``at_s`` seconds into the video."""
    frame = truth.frame_at(at_s)
    current, todo = truth.steps_to_do(frame)
    next_text = task.steps[todo[0]] if todo else TASK_COMPLETE
    return Guidance(task.steps[current], next_text, truth.mistake_at(frame))


class OracleAnnotator:
    name = "oracle"

    def __init__(self) -> None:
        self._truths: dict[Path, DemoTruth] = {}

    def _truth(self, request: AnnotationRequest) -> DemoTruth:
        if request.video is None or not request.timestamps:
            raise AnnotationError(f"{request.key}: the oracle needs the clip's video and times")
        truth = self._truths.get(request.video)
        if truth is None:
            truth = self._truths[request.video] = load_truth(request.video)
        if truth.task_id != request.task.id:
            raise AnnotationError(
                f"{request.video}: ground truth is for task '{truth.task_id}', "
                f"the clip's task is '{request.task.id}'"
            )
        return truth

    def questions(self, request: AnnotationRequest, per_clip: float) -> list[AskedQuestion]:
        """About ``per_clip`` questions for the clip's last moment, answered from the truth,
        each with the earlier guidance a live session would hold by then. Deterministic:
        the same clip gets the same questions."""
        truth = self._truth(request)
        at_s = request.timestamps[-1]
        rng = np.random.default_rng([truth.seed, round(at_s * 1000), len(request.timestamps)])
        count = int(per_clip) + int(rng.random() < per_clip % 1)
        history = history_at(truth, request.task, at_s) if rng.random() < 0.8 else ()
        return [
            AskedQuestion(q, history) for q in demo_questions(truth, request.task, at_s, count, rng)
        ]

    async def annotate(self, request: AnnotationRequest) -> AnnotationResult:
        truth = self._truth(request)
        guidance = oracle_guidance(truth, request.task, request.timestamps[-1])
        return AnnotationResult(
            key=request.key,
            guidance=guidance,
            raw=guidance.to_text(),
            model="oracle",
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
            attempts=1,
            error=None,
        )

    async def aclose(self) -> None:
        self._truths.clear()
