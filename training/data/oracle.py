"""The oracle annotator: guidance from a demo video's ground truth, no API call.

It plugs into the same :class:`~training.data.annotate.Annotator` interface as the VLM
annotators, so ``lavia data build DIR --annotator oracle`` turns rendered demo videos into
a training set fully offline, through the real transcription and clip code.

For a clip, the step in progress at its last frame is the current step; the next step is
the first step of the task not yet done (after a skipped step: the skipped one, which is
still to do), or "the task is complete"; a recorded mistake is the warning while its
step span lasts.
"""

from __future__ import annotations

import json
from pathlib import Path

from lavia_live.contract.guidance import TASK_COMPLETE, Guidance
from lavia_live.contract.tasks import TaskContext
from training.data.annotate import AnnotationError, AnnotationRequest, AnnotationResult
from training.data.manifest import TRUTH_SUFFIX
from training.demo.render import DemoTruth


def load_truth(video: Path) -> DemoTruth:
    path = video.with_name(video.name.rsplit(".", 1)[0] + TRUTH_SUFFIX)
    try:
        return DemoTruth.from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise AnnotationError(
            f"{video}: no ground truth for the oracle ({path}: {exc.strerror})"
        ) from exc
    except ValueError as exc:
        raise AnnotationError(f"{path}: unreadable ground truth: {exc}") from exc


def oracle_guidance(truth: DemoTruth, task: TaskContext, at_s: float) -> Guidance:
    """The guidance that is true at ``at_s`` seconds into the video."""
    frame = min(max(round(at_s * truth.fps), 0), truth.n_frames - 1)
    index = truth.span_index_at(frame)
    current = truth.spans[index].step
    done = {span.step for span in truth.spans[:index]}
    todo = [s for s in range(len(task.steps)) if s not in done and s != current]
    pending = [s for s in todo if s < current] or [s for s in todo if s > current]
    next_text = task.steps[pending[0]] if pending else TASK_COMPLETE
    warning = None
    for mistake in truth.mistakes:
        m_frame = int(str(mistake.get("frame", -1)))
        if 0 <= m_frame <= frame and truth.span_index_at(m_frame) == index:
            warning = str(mistake.get("text") or "") or None
    return Guidance(task.steps[current], next_text, warning)


class OracleAnnotator:
    name = "oracle"

    def __init__(self) -> None:
        self._truths: dict[Path, DemoTruth] = {}

    async def annotate(self, request: AnnotationRequest) -> AnnotationResult:
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
