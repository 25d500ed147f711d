"""The live loop of one session, whatever the video comes from (a WebRTC track, a file).

Every decoded frame's timestamp goes through the contract's :class:`TimestampSampler`; a
kept frame is converted once (:func:`~lavia_live.contract.frames.encode_frame`, in a worker
thread, exactly as the dataset build converts) into the :class:`RollingClipBuffer`. Each new
frame, once the buffer holds ``min_frames_for_guidance``, asks the :class:`Scheduler` for a
guidance request on the clip (a newer clip replaces one still waiting). The engine's answer
goes through the guidance parser into the :class:`StepTracker`, which decides what to
announce. Questions are answered with the current clip and the tracker's history, streamed.
Events leave through ``emit``; this module knows nothing of WebRTC.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import av

from lavia_live.config.settings import Settings
from lavia_live.contract.clip import Clip, EncodedFrame, RollingClipBuffer
from lavia_live.contract.frames import FrameFormat, encode_frame
from lavia_live.contract.guidance import parse_guidance
from lavia_live.contract.prompt import Prompt, build_guidance_prompt, build_question_prompt
from lavia_live.contract.sampling import TimestampSampler
from lavia_live.contract.tasks import TaskContext
from lavia_live.engines.base import Engine, EngineError, GenerationOptions
from lavia_live.server.metrics import Metrics
from lavia_live.server.protocol import (
    AnswerEvent,
    ErrorEvent,
    GuidanceEvent,
    ServerEvent,
    StateEvent,
    TaskEvent,
    TaskInfo,
)
from lavia_live.server.scheduler import QueueFull, Scheduler
from lavia_live.server.tracker import StepTracker

log = logging.getLogger(__name__)

Emit = Callable[[ServerEvent], None]
ENGINE_TIMEOUT_S = 60.0  # one model request, first token to last


@dataclass(frozen=True)
class LoopOptions:
    """What the loop needs from the settings, resolved once per server."""

    frame_format: FrameFormat
    min_frames: int
    confirm_answers: int
    max_tokens: int
    question_max_chars: int

    @classmethod
    def of(cls, settings: Settings, frame_max_side: int) -> LoopOptions:
        engine = settings.engine
        return cls(
            frame_format=FrameFormat(engine.frame_max_side or frame_max_side, engine.jpeg_quality),
            min_frames=settings.sampling.min_frames_for_guidance,
            confirm_answers=settings.serve.confirm_answers,
            max_tokens=engine.max_tokens,
            question_max_chars=settings.serve.question_max_chars,
        )


class LiveAssistant:
    def __init__(
        self,
        key: str,
        task: TaskContext,
        *,
        settings: Settings,
        options: LoopOptions,
        engine: Engine,
        scheduler: Scheduler,
        executor: Executor | None,
        emit: Emit,
        metrics: Metrics | None = None,
    ) -> None:
        self.key = key
        self.task = task
        self.engine = engine
        self.options = options
        self.emit = emit
        self.metrics = metrics
        self._scheduler = scheduler
        self._executor = executor
        self.sampler = TimestampSampler(settings.sampling.spec())
        self.buffer: RollingClipBuffer[EncodedFrame] = RollingClipBuffer(
            settings.sampling.clip_frames
        )
        self.tracker = StepTracker(task, confirm=options.confirm_answers)
        self.frames_received = 0
        self.frames_sampled = 0
        self.frames_dropped = 0
        self.last_latency_ms: float | None = None
        self._converting = False
        self._generation = 0  # bumped by a task switch or reset: late answers are ignored
        self._question_ids = itertools.count(1)
        self._wall_start = time.monotonic()

    # -- video in -------------------------------------------------------------------

    async def offer_frame(self, frame: av.VideoFrame) -> asyncio.Future[bool] | None:
        """Take one decoded frame; returns the guidance request it queued, if any."""
        self.frames_received += 1
        if self.metrics:
            self.metrics.frames_received.inc()
        if frame.pts is not None and frame.time_base is not None:
            t = self.sampler.offer(frame.pts, frame.time_base)
        else:  # a source without timestamps: the wall clock is all there is
            t = self.sampler.offer(time.monotonic() - self._wall_start)
        if t is None:
            return None
        if self._converting:  # the last kept frame is still converting: never queue up
            self.frames_dropped += 1
            if self.metrics:
                self.metrics.frames_dropped.inc()
            return None
        self._converting = True
        try:
            loop = asyncio.get_running_loop()
            jpeg = await loop.run_in_executor(
                self._executor, encode_frame, frame, self.options.frame_format
            )
        finally:
            self._converting = False
        self.buffer.push(EncodedFrame(jpeg, t))
        self.frames_sampled += 1
        if self.metrics:
            self.metrics.frames_sampled.inc()
        if not self.buffer.ready(self.options.min_frames):
            return None
        clip = self.buffer.snapshot()
        generation = self._generation
        return self._scheduler.submit_clip(self.key, lambda: self._guide(clip, generation))

    # -- client requests ------------------------------------------------------------

    def ask(self, text: str, question_id: str | None = None) -> str:
        """Queue a question; its answer streams as ``answer`` events with the returned id."""
        qid = question_id or f"q{next(self._question_ids)}"
        text = " ".join(text.split())
        if not text:
            self.emit(ErrorEvent(code="bad_question", message="the question is empty", id=qid))
            return qid
        if len(text) > self.options.question_max_chars:
            limit = self.options.question_max_chars
            msg = f"questions are at most {limit} characters"
            self.emit(ErrorEvent(code="bad_question", message=msg, id=qid))
            return qid
        generation = self._generation
        try:
            self._scheduler.submit_question(self.key, lambda: self._answer(qid, text, generation))
        except QueueFull as exc:
            self.emit(ErrorEvent(code="busy", message=str(exc), id=qid))
            return qid
        if self.metrics:
            self.metrics.questions.inc()
        return qid

    def switch_task(self, task: TaskContext) -> None:
        self.task = task
        self.reset()
        self.emit(TaskEvent(task=TaskInfo.of(task)))

    def reset(self) -> None:
        """Start the task over: progress forgotten, waiting requests dropped."""
        self._generation += 1
        self.tracker.reset(self.task)
        self._scheduler.drop_pending(self.key)

    def state(self) -> StateEvent:
        return StateEvent(
            frames_received=self.frames_received,
            frames_sampled=self.frames_sampled,
            buffered=len(self.buffer),
            model_busy=self._scheduler.busy(self.key),
            last_latency_ms=self.last_latency_ms,
        )

    # -- model requests (run by the scheduler) --------------------------------------

    async def close(self) -> None:
        """Drop this session's requests, the one in flight included."""
        await self._scheduler.drop(self.key)

    def report(self, code: str, message: str, question_id: str | None = None) -> None:
        """Tell the client about an error (and count it); the session goes on."""
        if self.metrics:
            self.metrics.errors.labels(code).inc()
        log.info("%s: %s", code, message, extra={"session": self.key})
        self.emit(ErrorEvent(code=code, message=message, id=question_id))

    async def _stream(
        self,
        prompt: Prompt,
        clip: Clip[EncodedFrame],
        on_piece: Callable[[str], None],
        question_id: str | None = None,
    ) -> str | None:
        """The engine's answer (pieces passed on as they come), or None after an error
        event. Timed for the ``state`` events and the latency histogram."""
        frames: Sequence[bytes] = [f.jpeg for f in clip]
        options = GenerationOptions(max_tokens=self.options.max_tokens)
        started = time.perf_counter()
        pieces: list[str] = []
        try:
            async with asyncio.timeout(ENGINE_TIMEOUT_S):
                async for piece in self.engine.stream(prompt, frames, options):
                    pieces.append(piece)
                    on_piece(piece)
        except EngineError as exc:
            self.report("engine_error", str(exc), question_id)
            return None
        except TimeoutError:
            msg = f"the model gave no answer in {ENGINE_TIMEOUT_S:g} s"
            self.report("engine_timeout", msg, question_id)
            return None
        elapsed = time.perf_counter() - started
        self.last_latency_ms = round(elapsed * 1000, 1)
        if self.metrics:
            self.metrics.engine_latency.labels(prompt.kind).observe(elapsed)
        return "".join(pieces)

    async def _guide(self, clip: Clip[EncodedFrame], generation: int) -> None:
        task = self.task
        text = await self._stream(build_guidance_prompt(task, len(clip)), clip, lambda _: None)
        if text is None or generation != self._generation:
            return
        parsed = parse_guidance(text)
        if not parsed.ok:
            if self.metrics:
                self.metrics.unparsed_answers.inc()
            log.debug("unparsed answer: %r", text[:200], extra={"session": self.key})
            return
        announcement = self.tracker.update(parsed)
        if announcement is None:
            return
        if self.metrics:
            self.metrics.guidance_events.inc()
        self.emit(
            GuidanceEvent(
                current_step=announcement.current_step,
                next_step=announcement.next_step,
                warning=announcement.warning,
                current_index=announcement.current_index,
                next_index=announcement.next_index,
                done=list(announcement.done),
                clip_start=round(clip.start, 3),
                clip_end=round(clip.end, 3),
                frames=len(clip),
                latency_ms=self.last_latency_ms or 0.0,
            )
        )

    async def _answer(self, qid: str, question: str, generation: int) -> None:
        clip = self.buffer.snapshot()
        prompt = build_question_prompt(self.task, len(clip), question, self.tracker.history())

        def delta(piece: str) -> None:
            if generation == self._generation:
                self.emit(AnswerEvent(id=qid, final=False, delta=piece))

        text = await self._stream(prompt, clip, delta, qid)
        if text is None:
            self.emit(AnswerEvent(id=qid, final=True, text=""))
        elif generation == self._generation:
            self.emit(AnswerEvent(id=qid, final=True, text=text.strip()))
