"""The live loop of one session, whatever the video comes from (a WebRTC track, a file).

Every decoded frame's timestamp goes through the contract's :class:`TimestampSampler`; a
kept frame is converted once (:func:`~lavia_live.contract.frames.encode_frame`, in a worker
thread, exactly as the dataset build converts) into the :class:`RollingClipBuffer`. Each new
frame, once the buffer holds ``min_frames_for_guidance``, asks the :class:`Scheduler` for a
guidance request on the clip (a newer clip replaces one still waiting). The engine's answer
goes through the guidance parser into the :class:`StepTracker`, which decides what to
announce. Questions are answered with the current clip and the tracker's history, streamed.
A question not confirmed yet (a voice question whose speaker may go on) can be answered
ahead, its events held in a :class:`HeldAnswer` until it is confirmed or withdrawn; guidance
can be paused while the person speaks (:meth:`LiveAssistant.pause_guidance`). Events leave
through ``emit``; this module knows nothing of WebRTC.

Requests in flight are cancelled (an OpenAI-compatible engine's HTTP stream closed) when they
are superseded: a reset or task switch cancels whatever runs, the session's end cancels it,
and a newer clip cancels the guidance in flight when it is stale: no token after
``engine.supersede_after_s`` (a request that replaced a superseded one runs to its end, so
a model slower than that still answers every other clip). An engine failure is one ``error``
event (``rate_limited``, ``engine_unavailable``, ...) until a request succeeds again; the
session goes on. Token counts the engine reports add up per session (``state``) and per
server (``/metrics``), priced when the config gives prices.
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
from lavia_live.engines.base import Engine, EngineError, GenerationOptions, Usage
from lavia_live.server.metrics import Metrics
from lavia_live.server.protocol import (
    AnswerEvent,
    ErrorEvent,
    GuidanceEvent,
    ServerEvent,
    StateEvent,
    TaskEvent,
    TaskInfo,
    TokenCount,
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
    supersede_after_s: float | None = None
    price_per_mtok: tuple[float, float] | None = None  # (prompt, completion) USD

    @classmethod
    def of(cls, settings: Settings, frame_max_side: int) -> LoopOptions:
        engine = settings.engine
        price_in, price_out = engine.price_per_mtok_input, engine.price_per_mtok_output
        return cls(
            frame_format=FrameFormat(engine.frame_max_side or frame_max_side, engine.jpeg_quality),
            min_frames=settings.sampling.min_frames_for_guidance,
            confirm_answers=settings.serve.confirm_answers,
            max_tokens=engine.max_tokens,
            question_max_chars=settings.serve.question_max_chars,
            supersede_after_s=engine.supersede_after_s,
            price_per_mtok=(
                (price_in, price_out) if price_in is not None and price_out is not None else None
            ),
        )

    def cost_usd(self, usage: Usage) -> float | None:
        if self.price_per_mtok is None:
            return None
        prompt, completion = self.price_per_mtok
        return (usage.prompt_tokens * prompt + usage.completion_tokens * completion) / 1e6


@dataclass
class _InFlight:
    """The model request a session has running."""

    kind: str  # the prompt's kind: guidance or question
    started: float  # perf_counter
    protected: bool  # it replaced a superseded request: it runs to its end
    first_token: bool = False


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
        self.usage = Usage()  # this session's tokens, as the engine reports them
        self._metered = Usage()  # what of it the server's metrics already counted
        self._in_flight: _InFlight | None = None
        self._superseded_last = False  # the last guidance request was superseded
        self._failing: str | None = None  # the engine's error code, reported once
        self._guidance_paused_until = 0.0  # monotonic; see pause_guidance

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
        if time.monotonic() < self._guidance_paused_until:
            return None  # the clip is in the buffer: the next request after the pause sees it
        clip = self.buffer.snapshot()
        generation = self._generation
        self._supersede_stale()
        return self._scheduler.submit_clip(self.key, lambda: self._guide(clip, generation))

    def _supersede_stale(self) -> None:
        """A newer clip is ready: cancel the guidance in flight if it has had no token for
        ``supersede_after_s`` (and did not itself replace a superseded request)."""
        flight, limit = self._in_flight, self.options.supersede_after_s
        if limit is None or flight is None or flight.kind != "guidance":
            return
        if flight.first_token or flight.protected:
            return
        waited = time.perf_counter() - flight.started
        if waited < limit or not self._scheduler.cancel_running(self.key):
            return
        self._superseded_last = True
        if self.metrics:
            self.metrics.cancelled_requests.labels("superseded").inc()
        log.info(
            "guidance superseded after %.1f s without a token", waited, extra={"session": self.key}
        )

    # -- client requests ------------------------------------------------------------

    def ask(self, text: str, question_id: str | None = None) -> str:
        """Queue a question; its answer streams as ``answer`` events with the returned id."""
        qid = question_id or f"q{next(self._question_ids)}"
        text = " ".join(text.split())
        problem = self._question_problem(text)
        if problem is not None:
            self.emit(ErrorEvent(code="bad_question", message=problem, id=qid))
            return qid
        generation = self._generation
        try:
            self._scheduler.submit_question(
                self.key, lambda: self._answer(qid, text, generation, self.emit)
            )
        except QueueFull as exc:
            self.emit(ErrorEvent(code="busy", message=str(exc), id=qid))
            return qid
        if self.metrics:
            self.metrics.questions.inc()
        return qid

    def ask_held(self, text: str, question_id: str) -> HeldAnswer | None:
        """Start answering a question that is not confirmed yet (a voice question whose
        speaker may still go on): its events wait in the returned :class:`HeldAnswer`
        until it is confirmed, or go nowhere if it is withdrawn. None when it cannot be
        queued now; :meth:`ask` then tells the client why."""
        text = " ".join(text.split())
        if self._question_problem(text) is not None:
            return None
        generation = self._generation
        held = HeldAnswer(self.emit, self._withdraw, self.metrics)
        try:
            held.request = self._scheduler.submit_question(
                self.key, lambda: self._answer(question_id, text, generation, held.emit)
            )
        except QueueFull:
            return None
        return held

    def _withdraw(self, request: asyncio.Future[bool]) -> None:
        """Cancel a held answer's request (waiting or running), counted as withdrawn."""
        if self._scheduler.cancel(self.key, request) and self.metrics:
            self.metrics.cancelled_requests.labels("withdrawn").inc()

    def _question_problem(self, text: str) -> str | None:
        if not text:
            return "the question is empty"
        if len(text) > self.options.question_max_chars:
            return f"questions are at most {self.options.question_max_chars} characters"
        return None

    def pause_guidance(self, seconds: float | None) -> None:
        """No new guidance request for ``seconds`` (None: from now on again), while frames
        go on filling the buffer: the person is asking something, and the model should be
        free for it. A request already running finishes."""
        self._guidance_paused_until = 0.0 if seconds is None else time.monotonic() + seconds

    def switch_task(self, task: TaskContext) -> None:
        self.task = task
        self.reset()
        self.emit(TaskEvent(task=TaskInfo.of(task)))

    def reset(self) -> None:
        """Start the task over: progress forgotten, waiting requests dropped and the one in
        flight cancelled (a question's answer then ends empty)."""
        self._generation += 1
        self.tracker.reset(self.task)
        self._scheduler.drop_pending(self.key)
        self._superseded_last = False
        if self._scheduler.cancel_running(self.key) and self.metrics:
            self.metrics.cancelled_requests.labels("reset").inc()

    def state(self) -> StateEvent:
        usage = self.usage
        tokens = TokenCount(prompt=usage.prompt_tokens, completion=usage.completion_tokens)
        cost = self.options.cost_usd(usage)
        return StateEvent(
            frames_received=self.frames_received,
            frames_sampled=self.frames_sampled,
            buffered=len(self.buffer),
            model_busy=self._scheduler.busy(self.key),
            last_latency_ms=self.last_latency_ms,
            tokens=tokens if usage.requests else None,
            cost_usd=round(cost, 6) if cost is not None and usage.requests else None,
        )

    # -- model requests (run by the scheduler) --------------------------------------

    async def close(self) -> None:
        """Drop this session's requests, the one in flight included."""
        await self._scheduler.drop(self.key)

    def report(
        self, code: str, message: str, question_id: str | None = None, emit: Emit | None = None
    ) -> None:
        """Tell the client about an error (and count it); the session goes on."""
        if self.metrics:
            self.metrics.errors.labels(code).inc()
        log.info("%s: %s", code, message, extra={"session": self.key})
        (emit or self.emit)(ErrorEvent(code=code, message=message, id=question_id))

    def _engine_failed(
        self, code: str, message: str, question_id: str | None, emit: Emit | None = None
    ) -> None:
        """An engine failure: reported when it is new (or concerns a question); the same
        failure again on the next clips is only counted, until a request succeeds."""
        if question_id is None and code == self._failing:
            if self.metrics:
                self.metrics.errors.labels(code).inc()
            log.debug("%s again: %s", code, message, extra={"session": self.key})
        else:
            self.report(code, message, question_id, emit)
        self._failing = code

    def _meter(self) -> None:
        """Add the tokens counted since the last call to the server's metrics."""
        usage, metered = self.usage, self._metered
        prompt = usage.prompt_tokens - metered.prompt_tokens
        completion = usage.completion_tokens - metered.completion_tokens
        if self.metrics is None or not (prompt or completion):
            return
        self.metrics.engine_tokens.labels("prompt").inc(prompt)
        self.metrics.engine_tokens.labels("completion").inc(completion)
        cost = self.options.cost_usd(Usage(prompt, completion))
        if cost is not None:
            self.metrics.engine_cost.inc(cost)
        metered.add(prompt, completion)

    async def _stream(
        self,
        prompt: Prompt,
        clip: Clip[EncodedFrame],
        on_piece: Callable[[str], None],
        question_id: str | None = None,
        emit: Emit | None = None,
    ) -> str | None:
        """The engine's answer (pieces passed on as they come), or None after an error
        event. Timed for the ``state`` events and the latency histogram."""
        frames: Sequence[bytes] = [f.jpeg for f in clip]
        options = GenerationOptions(max_tokens=self.options.max_tokens, usage=self.usage)
        started = time.perf_counter()
        flight = _InFlight(prompt.kind, started, protected=self._superseded_last)
        self._in_flight = flight
        pieces: list[str] = []
        try:
            # A cancellation reaches the engine's generator where it waits, so its own
            # cleanup closes the request (an HTTP stream, a generation thread).
            async with asyncio.timeout(ENGINE_TIMEOUT_S):
                async for piece in self.engine.stream(prompt, frames, options):
                    flight.first_token = True
                    pieces.append(piece)
                    on_piece(piece)
        except EngineError as exc:
            self._engine_failed(exc.code, str(exc), question_id, emit)
            return None
        except TimeoutError:
            msg = f"the model gave no answer in {ENGINE_TIMEOUT_S:g} s"
            self._engine_failed("engine_timeout", msg, question_id, emit)
            return None
        finally:
            if self._in_flight is flight:
                self._in_flight = None
            if prompt.kind == "guidance" and flight.protected:
                self._superseded_last = False  # ran to its end: the next one may be cut again
            self._meter()
        if self._failing is not None:
            log.info("the engine answers again", extra={"session": self.key})
            self._failing = None
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

    async def _answer(self, qid: str, question: str, generation: int, emit: Emit) -> None:
        clip = self.buffer.snapshot()
        prompt = build_question_prompt(self.task, len(clip), question, self.tracker.history())

        def delta(piece: str) -> None:
            if generation == self._generation:
                emit(AnswerEvent(id=qid, final=False, delta=piece))

        try:
            text = await self._stream(prompt, clip, delta, qid, emit)
        except asyncio.CancelledError:  # a reset, a task switch, the session's end
            emit(AnswerEvent(id=qid, final=True, text=""))
            raise
        if text is None:
            emit(AnswerEvent(id=qid, final=True, text=""))
        elif generation == self._generation:
            emit(AnswerEvent(id=qid, final=True, text=text.strip()))


class HeldAnswer:
    """The answer to a question asked before it was confirmed (:meth:`LiveAssistant.ask_held`):
    it runs at once, its events (and an error it meets) wait here until :meth:`confirm`
    sends them, and the rest as they come; :meth:`withdraw` cancels it unseen."""

    def __init__(
        self,
        emit: Emit,
        cancel: Callable[[asyncio.Future[bool]], None],
        metrics: Metrics | None = None,
    ) -> None:
        self._emit = emit
        self._cancel = cancel
        self._metrics = metrics
        self._waiting: list[ServerEvent] | None = []  # None once confirmed
        self._withdrawn = False
        self.request: asyncio.Future[bool] | None = None  # the scheduler's, once queued

    def emit(self, event: ServerEvent) -> None:
        if self._withdrawn:
            return
        if self._waiting is None:
            self._emit(event)
        else:
            self._waiting.append(event)

    def confirm(self) -> None:
        """The question stands: send what was held back, and the rest as it comes."""
        waiting, self._waiting = self._waiting, None
        if waiting is None or self._withdrawn:
            return
        if self._metrics:
            self._metrics.questions.inc()
        for event in waiting:
            self._emit(event)

    def withdraw(self) -> None:
        """The question did not stand (the person went on speaking): cancel it unseen."""
        if self._waiting is None or self._withdrawn:
            return
        self._withdrawn = True
        if self.request is not None:
            self._cancel(self.request)
