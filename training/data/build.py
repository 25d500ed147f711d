"""``lavia data build``: narrated videos -> transcripts -> clips -> annotations -> records.

The video stage (:mod:`training.data.stages`) runs in a worker thread, or as Ray tasks with
``--ray``; annotation runs on the event loop with a concurrency limit. Every result is keyed
by content and written atomically (:mod:`training.data.store`), so a killed build resumes
where it stopped and never pays for an annotation twice. ``records.jsonl`` and the card are
rewritten from those results at the end of every run.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lavia_live.contract.guidance import Guidance
from lavia_live.contract.prompt import (
    PROMPT_VERSION,
    build_guidance_prompt,
    build_question_prompt,
)
from lavia_live.contract.records import Annotation, InstructionRecord, QuestionInfo, write_jsonl
from lavia_live.contract.tasks import TaskContext, TaskLibrary
from lavia_live.errors import LaviaError
from lavia_live.speech.asr import Transcript
from training.config import PipelineSettings
from training.data.annotate import (
    AnnotationError,
    AnnotationRequest,
    Annotator,
    AnnotatorOptions,
    OpenAIAnnotator,
)
from training.data.card import write_card
from training.data.manifest import VideoItem, collect_inputs
from training.data.oracle import OracleAnnotator, load_truth
from training.data.stages import VideoOutcome, process_video
from training.data.store import BuildStore, content_key, file_digest, read_json
from training.data.transcribe import TranscriptionError, transcript_from_json

log = logging.getLogger(__name__)


class BuildError(LaviaError):
    """The build cannot go on (disk full, Ray missing); what was done so far is kept."""


@dataclass
class Failure:
    where: str
    stage: str
    reason: str


@dataclass
class BuildReport:
    out: Path
    annotator: str
    videos_in: int = 0
    videos_done: int = 0
    clips: int = 0
    records: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    annotation_usd: float = 0.0
    transcription_usd: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    notes: list[Failure] = field(default_factory=list)


def make_annotator(settings: PipelineSettings) -> Annotator:
    a = settings.data.annotate
    if a.annotator == "oracle":
        return OracleAnnotator()
    return OpenAIAnnotator(
        AnnotatorOptions(
            model=a.model,
            base_url=a.base_url,
            api_key_env=a.api_key_env,
            max_concurrency=a.max_concurrency,
            max_retries=a.max_retries,
            max_answer_attempts=a.max_answer_attempts,
            timeout_s=a.timeout_s,
            structured_output=a.structured_output,
            image_detail=a.image_detail,
            input_usd_per_mtok=a.input_usd_per_mtok,
            output_usd_per_mtok=a.output_usd_per_mtok,
        )
    )


def task_for(item: VideoItem, library: TaskLibrary, guideline: str | None) -> TaskContext:
    """The task context of a video: a library task, or the manifest's title + guideline."""
    task_id = item.task_id
    if task_id is None and item.truth_path.is_file():
        task_id = load_truth(item.path).task_id
    if task_id is not None:
        return library.require(task_id)
    stem = item.path.stem
    slug = re.sub(r"[^a-z0-9_\-]+", "_", stem.lower()).strip("_") or "video"
    title = item.title or stem.replace("_", " ").replace("-", " ").strip() or "the task"
    return TaskContext(slug, title, (), (item.guideline or guideline or "").strip())


class _Build:
    def __init__(
        self,
        settings: PipelineSettings,
        out: Path,
        annotator: Annotator,
        use_ray: bool,
        progress: bool | None,
    ) -> None:
        self.settings = settings
        self.store = BuildStore(out)
        self.annotator = annotator
        self.use_ray = use_ray
        self.library = TaskLibrary.load(settings.tasks.folder)
        self.report = BuildReport(out=out, annotator=annotator.name)
        # (video, clip, 0) the clip's guidance record; (video, clip, n > 0) its questions
        self.records: dict[tuple[int, int, int], InstructionRecord] = {}
        self.limit = asyncio.Semaphore(settings.data.annotate.max_concurrency)
        self.progress = progress
        a = settings.data.annotate
        self.fingerprint = (annotator.name, a.structured_output, a.image_detail, PROMPT_VERSION)

    def _bar(self, desc: str, unit: str, total: int | None) -> tqdm[Any]:
        disable = None if self.progress is None else not self.progress
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)

    async def run(self, items: list[VideoItem]) -> None:
        digests: dict[str, str] = {}
        work: list[tuple[int, VideoItem, str]] = []
        for i, item in enumerate(items):
            try:
                digest = await asyncio.to_thread(file_digest, item.path)
            except OSError as exc:
                self._fail(str(item.path), "read", exc.strerror or str(exc))
                continue
            if digest in digests:
                self._fail(str(item.path), "read", f"same content as {digests[digest]}; built once")
                continue
            digests[digest] = str(item.path)
            work.append((i, item, digest))
        settings_json = self.settings.model_dump(mode="json")
        out = str(self.store.out)
        videos = self._bar("videos", "video", len(work))
        clips = self._bar("annotate", "clip", 0)
        pending: list[asyncio.Task[None]] = []
        try:
            for start, (i, item, _) in self._video_stage(work, settings_json, out):
                outcome = VideoOutcome.from_json(await start())
                videos.update()
                pending.extend(self._after_video(i, item, outcome, clips))
            await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            videos.close()
            clips.close()

    def _video_stage(
        self, work: list[tuple[int, VideoItem, str]], settings_json: dict[str, Any], out: str
    ) -> list[tuple[Callable[[], Awaitable[dict[str, Any]]], tuple[int, VideoItem, str]]]:
        """Per video, a function that starts (locally: one video at a time, in a worker
        thread) or collects (Ray: all submitted at once) its stage result."""

        def args(it: VideoItem, digest: str) -> tuple[str, str, dict[str, Any], str, bool]:
            return str(it.path), digest, settings_json, out, it.guideline is None

        if not self.use_ray:
            return [
                (partial(asyncio.to_thread, process_video, *args(it, d)), (i, it, d))
                for i, it, d in work
            ]
        try:
            import ray
        except ImportError as exc:
            raise BuildError("--ray needs Ray: pip install 'lavia-live[ray]'") from exc
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        remote = ray.remote(process_video)
        # Ray already runs one video per CPU: each decodes in one pass.
        data = settings_json.get("data", {})
        extract = {**data.get("extract", {}), "workers": 1}
        settings_json = {**settings_json, "data": {**data, "extract": extract}}
        return [(partial(_awaitable, remote.remote(*args(it, d))), (i, it, d)) for i, it, d in work]

    def _after_video(
        self, i: int, item: VideoItem, outcome: VideoOutcome, bar: tqdm[Any]
    ) -> list[asyncio.Task[None]]:
        where = str(item.path)
        if outcome.error:
            self._fail(where, "video", outcome.error)
        for note in outcome.notes:
            self.report.notes.append(Failure(where, "transcribe", note))
        if outcome.error and not outcome.clips:
            return []
        if not outcome.error:
            self.report.videos_done += 1
        self.report.seconds += outcome.duration_s
        self.report.transcription_usd += outcome.transcription_cost_usd
        transcript: Transcript | None = None
        if outcome.transcript_key:
            cached = read_json(self.store.transcript_path(outcome.transcript_key))
            try:
                transcript = transcript_from_json(cached["transcript"]) if cached else None
            except (TranscriptionError, KeyError, TypeError) as exc:
                self.report.notes.append(Failure(where, "transcribe", f"cached transcript: {exc}"))
        try:
            task = task_for(item, self.library, transcript.text if transcript else None)
        except (LaviaError, ValueError) as exc:
            self._fail(where, "task", str(exc))
            return []
        bar.total = (bar.total or 0) + len(outcome.clips)
        bar.refresh()
        self.report.clips += len(outcome.clips)
        return [
            asyncio.create_task(self._annotate(i, item, outcome, clip, task, transcript, bar))
            for clip in outcome.clips
        ]

    async def _annotate(
        self,
        i: int,
        item: VideoItem,
        outcome: VideoOutcome,
        clip: dict[str, Any],
        task: TaskContext,
        transcript: Transcript | None,
        bar: tqdm[Any],
    ) -> None:
        where = f"{item.path} clip {clip['index']}"
        async with self.limit:
            prompt = build_guidance_prompt(task, len(clip["frames"]))
            frames = await asyncio.to_thread(
                lambda: tuple((self.store.out / f).read_bytes() for f in clip["frames"])
            )
            key = content_key("annotation", self.fingerprint, prompt.llava_text(), *frames)
            path = self.store.annotation_path(key)
            cached = read_json(path)
            if not isinstance(cached, dict):
                request = AnnotationRequest(
                    key, task, prompt, frames, item.path, tuple(clip["timestamps"])
                )
                try:
                    result = await self.annotator.annotate(request)
                except AnnotationError as exc:
                    self._fail(where, "annotate", str(exc))
                    bar.update()
                    return
                self.report.prompt_tokens += result.prompt_tokens
                self.report.completion_tokens += result.completion_tokens
                self.report.annotation_usd += result.cost_usd
                if not result.ok or result.guidance is None:
                    self._fail(where, "annotate", result.error or "no answer")
                    bar.update()
                    return
                cached = {
                    "guidance": result.guidance.to_json(),
                    "model": result.model,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "cost_usd": result.cost_usd,
                }
                await asyncio.to_thread(self.store.write, path, cached)
        guidance = Guidance(**cached["guidance"])
        annotator = self.annotator.name.split(":")[0]
        model = str(cached.get("model") or "")
        start, end = float(clip["start_s"]), float(clip["end_s"])
        record_id = f"{item.path.stem}-{outcome.digest[:8]}-{int(clip['index']):04d}"
        meta: dict[str, Any] = {
            "task_id": task.id,
            "source_video": str(item.path),
            "clip_index": int(clip["index"]),
            "clip_start": start,
            "clip_end": end,
            "frame_timestamps": list(clip["timestamps"]),
            "transcript_span": transcript.span(start, end) if transcript else None,
            "annotator": annotator if model in ("", annotator) else f"{annotator}:{model}",
        }
        self.records[(i, int(clip["index"]), 0)] = InstructionRecord.from_prompt(
            record_id,
            list(clip["frames"]),
            prompt,
            guidance.to_text(),
            annotation=Annotation(**guidance.to_json()),
            **meta,
        )
        per_clip = self.settings.data.annotate.questions_per_clip
        if per_clip > 0 and isinstance(self.annotator, OracleAnnotator):
            request = AnnotationRequest(key, task, prompt, (), item.path, tuple(clip["timestamps"]))
            try:
                asked = self.annotator.questions(request, per_clip)
            except AnnotationError as exc:
                self._fail(where, "questions", str(exc))
                asked = []
            for n, a in enumerate(asked, start=1):
                q = a.question
                self.records[(i, int(clip["index"]), n)] = InstructionRecord.from_prompt(
                    f"{record_id}-q{n}",
                    list(clip["frames"]),
                    build_question_prompt(task, len(clip["frames"]), q.question, a.history),
                    q.answer,
                    question=QuestionInfo(kind=q.kind, question=q.question, facts=list(q.facts)),
                    **meta,
                )
        bar.update()

    def _fail(self, where: str, stage: str, reason: str) -> None:
        log.warning("%s: %s failed: %s", where, stage, reason)
        self.report.failures.append(Failure(where, stage, reason))


async def _awaitable(ref: Any) -> dict[str, Any]:
    result: dict[str, Any] = await ref
    return result


async def build_dataset(
    inputs: Sequence[str | Path],
    out: Path,
    settings: PipelineSettings,
    *,
    use_ray: bool = False,
    progress: bool | None = None,
    annotator_factory: Callable[[PipelineSettings], Annotator] = make_annotator,
) -> BuildReport:
    """Build (or finish building) the dataset in ``out``; returns what was done."""
    items, problems = collect_inputs(inputs)
    annotator = annotator_factory(settings)  # fails now on a missing API key, before any work
    build = _Build(settings, out, annotator, use_ray, progress)
    build.report.videos_in = len(items)
    for problem in problems:
        build.report.failures.append(Failure(problem.where, "input", problem.reason))
    try:
        await build.run(items)
        build.report.records = write_jsonl(
            build.store.records_path, (build.records[k] for k in sorted(build.records))
        )
        write_card(build.report, settings)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BuildError(
                f"disk full while writing {exc.filename or out}: what was built so far is kept; "
                "free space and run the same command again to finish"
            ) from exc
        raise
    finally:
        await annotator.aclose()
    return build.report
