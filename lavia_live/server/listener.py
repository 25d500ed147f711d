"""What one session hears: the client's microphone track turned into questions.

:meth:`Listener.run` reads the incoming audio track (any rate, layout and format; every
``recv`` with a timeout) into a bounded backlog; a second coroutine takes the backlog in
batches to the shared VAD thread, which resamples it to 16 kHz mono
(:class:`~lavia_live.speech.asr.MonoResampler`) and cuts it into utterances
(:class:`~lavia_live.speech.vad.UtteranceSegmenter`, state kept per session). While the
person speaks, the utterance so far is sent every ``partial_interval_s`` to the shared
:class:`~lavia_live.server.recognizer.RecognitionWorker` for a partial ``transcript`` (skipped
when the worker is busy); at its end the utterance is sent for the final one, whose text is
asked through ``ask``, exactly as a typed question. The final is started early: once
``early_final_ms`` of silence follows the speech, the speech the utterance will end with is
known (:meth:`~lavia_live.speech.vad.UtteranceSegmenter.ending`), so it is sent then, while
the rest of ``min_silence_ms`` is waited for, and its text is answered at once through
``ask_held`` (``listening.answer_early``): the answer's events are held back until the
utterance ends with that same speech, which confirms it. If the person speaks again, the
early request and its answer are withdrawn unseen and the utterance goes on. A pause in
the audio (the microphone turned off) or the track's end finishes the utterance in
progress; while ``gated`` says so (the assistant is speaking, for speakers without echo
cancelling) the audio is dropped.

:attr:`Listener.on_speech_start` is called as soon as the VAD scores the first voiced window
of an utterance (not at its end): the session stops the assistant's voice there (barge-in).
:attr:`Listener.on_speech_end` is called when it ends, however it ends. Push-to-talk: after
:meth:`Listener.press` a pause ends nothing, and :meth:`Listener.release` ends the utterance
in progress right away (after the audio already in flight, :data:`RELEASE_TAIL_S`) instead of
after ``min_silence_ms`` of silence.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from lavia_live.config.settings import ListeningSettings
from lavia_live.errors import SpeechError
from lavia_live.server.metrics import Metrics
from lavia_live.server.protocol import ListeningInfo, ServerEvent, TranscriptEvent
from lavia_live.server.recognizer import RecognitionWorker, RecognizerBusy
from lavia_live.speech.asr import MonoResampler, Transcript
from lavia_live.speech.vad import (
    SegmenterOptions,
    SegmentEvent,
    SpeechEnded,
    SpeechStarted,
    UtteranceSegmenter,
)

log = logging.getLogger(__name__)

GAP_S = 1.5  # no audio this long (microphone off or gone): the utterance in progress ends
MAX_BACKLOG_FRAMES = 250  # frames waiting for the VAD (5 s of 20 ms frames); older dropped
VAD_TIMEOUT_S = 10.0  # one batch through the resampler and the VAD
RELEASE_TAIL_S = 0.1  # audio arriving this soon after a push-to-talk release still counts


class Held(Protocol):
    """An answer started before its question was confirmed
    (:class:`~lavia_live.server.assistant.HeldAnswer`)."""

    def confirm(self) -> None: ...

    def withdraw(self) -> None: ...


@dataclass
class _Early:
    """The final transcript asked for early, and the answer started on it."""

    index: int  # the utterance
    spoken: int  # its spoken samples when asked: the end must have the same
    request: asyncio.Future[Transcript]
    answer: Held | None = None

    def withdraw(self) -> None:
        self.request.cancel()
        if self.answer is not None:
            self.answer.withdraw()


class _Mark(Enum):
    GAP = "gap"  # the audio paused: finish the utterance in progress
    GATE = "gate"  # the audio is being dropped: forget the utterance in progress
    PRESS = "press"  # push-to-talk pressed: silence ends nothing until the release
    RELEASE = "release"  # push-to-talk released: finish the utterance in progress now


class Listener:
    def __init__(
        self,
        key: str,
        settings: ListeningSettings,
        worker: RecognitionWorker,
        vad_executor: Executor | None,
        emit: Callable[[ServerEvent], None],
        ask: Callable[[str, str], object],
        report: Callable[[str, str, str | None], None],
        *,
        gated: Callable[[], bool] = lambda: False,
        metrics: Metrics | None = None,
        ask_held: Callable[[str, str], Held | None] | None = None,
    ) -> None:
        self.key = key
        self.settings = settings
        self.on_speech_start: Callable[[str], None] = lambda utterance_id: None
        self.on_speech_end: Callable[[str], None] = lambda utterance_id: None
        self._worker = worker
        self._executor = vad_executor
        self._emit = emit
        self._ask = ask
        self._ask_held = ask_held
        self._report = report
        self._gated = gated
        self._metrics = metrics
        self._segmenter = UtteranceSegmenter(
            SegmenterOptions(
                threshold=settings.vad_threshold,
                min_silence_ms=settings.min_silence_ms,
                min_speech_ms=settings.min_speech_ms,
                pad_ms=settings.speech_pad_ms,
                early_ms=settings.early_final_ms,
                max_utterance_s=settings.max_utterance_s,
            )
        )
        self._resampler = MonoResampler()
        self._backlog: deque[av.AudioFrame | _Mark] = deque()
        self._wake = asyncio.Event()
        self._ended = False  # the track ended: the processor finishes and returns
        self._closed = False
        self._current: int | None = None  # index of the utterance in progress
        self._partial_at = 0.0  # when the last partial was asked for
        self._early: _Early | None = None  # the final asked for early
        self._answered = 0  # highest utterance index whose final transcript was sent
        self._shown = 0  # highest utterance index a partial transcript was sent for
        self._vad_failed = False
        self._release: asyncio.TimerHandle | None = None
        self.frames_received = 0
        self.frames_dropped = 0  # backlog overflow
        self.finals = 0

    def info(self) -> ListeningInfo:
        return ListeningInfo(
            model=self.settings.model,
            max_utterance_s=self.settings.max_utterance_s,
            gate_while_speaking=self.settings.gate_while_speaking,
            barge_in=self.settings.barge_in and not self.settings.gate_while_speaking,
        )

    def close(self) -> None:
        """The session ended: no more events, its waiting recognition is cancelled."""
        self._closed = True
        if self._release is not None:
            self._release.cancel()
        self._worker.drop(self.key)

    def press(self) -> None:
        """Push-to-talk was pressed: from the audio that follows, a pause ends nothing."""
        if self._release is not None:  # pressed again before the last release took effect
            self._release.cancel()
            self._release = None
            self._push(_Mark.RELEASE)
        self._push(_Mark.PRESS)

    def release(self) -> None:
        """Push-to-talk was released: the utterance in progress ends now, with the audio
        that arrives within :data:`RELEASE_TAIL_S` (sent before the release, in flight)."""
        if self._release is not None or self._closed:
            return

        def end() -> None:
            self._release = None
            self._push(_Mark.RELEASE)

        self._release = asyncio.get_running_loop().call_later(RELEASE_TAIL_S, end)

    # -- reading --------------------------------------------------------------------

    async def run(self, track: MediaStreamTrack) -> None:
        """Listen to ``track`` until it ends (the session owns this task)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._process(), name=f"lavia-vad-{self.key}")
            await self._read(track)

    async def _read(self, track: MediaStreamTrack) -> None:
        paused = gating = False
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(track.recv(), GAP_S)
                except TimeoutError:
                    if not paused:
                        paused = True
                        self._push(_Mark.GAP)
                    continue
                paused = False
                if not isinstance(frame, av.AudioFrame):
                    continue
                self.frames_received += 1
                if self.settings.gate_while_speaking and self._gated():
                    if not gating:
                        gating = True
                        self._push(_Mark.GATE)
                    continue
                gating = False
                self._push(frame)
        except MediaStreamError:
            log.info("microphone track ended", extra={"session": self.key})
        finally:
            self._ended = True
            self._push(_Mark.GAP)

    def _push(self, item: av.AudioFrame | _Mark) -> None:
        if len(self._backlog) >= MAX_BACKLOG_FRAMES:
            self._backlog.popleft()
            self.frames_dropped += 1
            if self.frames_dropped % MAX_BACKLOG_FRAMES == 1:
                log.warning("speech detection is behind: audio dropped",
                            extra={"session": self.key})  # fmt: skip
        self._backlog.append(item)
        self._wake.set()

    # -- utterances -----------------------------------------------------------------

    async def _process(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._backlog:
                if self._ended:
                    return
                self._wake.clear()
                await self._wake.wait()
            items = list(self._backlog)
            self._backlog.clear()
            try:
                job = loop.run_in_executor(self._executor, self._segment, items)
                events = await asyncio.wait_for(job, VAD_TIMEOUT_S)
            except (SpeechError, TimeoutError) as exc:
                if not self._vad_failed:  # once per failure run, not once per batch
                    self._vad_failed = True
                    self._report("listening_error", f"speech detection failed: {exc}", None)
                continue
            self._vad_failed = False
            for event in events:
                if isinstance(event, SpeechStarted):
                    self._started(event)
                else:
                    self._finish(event)
            self._maybe_early_final()
            self._maybe_partial()

    def _segment(self, items: list[av.AudioFrame | _Mark]) -> list[SegmentEvent]:
        """Resample and segment a batch (the VAD thread runs this)."""
        events: list[SegmentEvent] = []
        for item in items:
            if item is _Mark.PRESS:
                self._segmenter.holding = True
            elif item is _Mark.GAP or item is _Mark.RELEASE:
                events += self._segmenter.feed(self._resampler.flush())
                events += self._segmenter.flush("released" if item is _Mark.RELEASE else "ended")
                if item is _Mark.RELEASE:
                    self._segmenter.holding = False
            elif item is _Mark.GATE:
                self._resampler.flush()
                events += self._segmenter.reset()
            else:
                assert isinstance(item, av.AudioFrame)
                events += self._segmenter.feed(self._resampler.resample(item))
        return events

    def _uid(self, index: int) -> str:
        return f"voice-{index}"

    def _started(self, event: SpeechStarted) -> None:
        self._current = event.index
        self._partial_at = time.monotonic()
        log.debug("utterance %d started", event.index, extra={"session": self.key})
        self.on_speech_start(self._uid(event.index))

    def _finish(self, event: SpeechEnded) -> None:
        self._current = None
        uid = self._uid(event.index)
        self.on_speech_end(uid)
        early, self._early = self._early, None
        if early is not None and (early.index, early.spoken) != (event.index, event.spoken):
            early.withdraw()  # it heard less than the utterance ended with
            early = None
        if event.audio is None:  # too short, or dropped
            if early is not None:
                early.withdraw()
            self._count("dropped")
            if self._shown == event.index:  # the client shows a partial: it is void
                self._answered = event.index
                self._emit(TranscriptEvent(id=uid, final=True, text="", audio_s=0.0))
            return
        answer = None
        if early is not None and not early.request.cancelled():
            future: asyncio.Future[Transcript] | None = early.request  # the same audio
            answer = early.answer
        else:
            try:
                future = self._worker.submit(self.key, event.audio)
            except (RecognizerBusy, SpeechError) as exc:
                self._count("error")
                self._report("asr_busy", str(exc), uid)
                return
        assert future is not None
        future.add_done_callback(functools.partial(self._final, event, time.monotonic(), answer))

    def _maybe_early_final(self) -> None:
        """Ask for the final transcript as soon as the utterance's audio is known (see the
        module docstring); cancel that request if the person has spoken again since."""
        index = self._current
        ending = self._segmenter.ending() if index is not None else None
        early = self._early
        if early is not None:
            if ending is not None and (early.index, early.spoken) == (index, ending[0]):
                return  # asked already, and still what the utterance will end with
            early.withdraw()
            self._early = None
        if index is None or ending is None:
            return
        spoken, audio = ending
        try:
            future = self._worker.submit(self.key, audio)
        except (RecognizerBusy, SpeechError):
            return  # the utterance's end asks again, and reports a failure then
        assert future is not None
        log.debug("utterance %d: its end asked for early", index, extra={"session": self.key})
        self._early = _Early(index, spoken, future)
        future.add_done_callback(functools.partial(self._heard_early, self._early))

    def _heard_early(self, early: _Early, future: asyncio.Future[Transcript]) -> None:
        """The early final is in while the utterance may still go on: start answering it,
        held back until the utterance ends as it was heard (:meth:`_final` confirms it)."""
        if self._closed or self._early is not early or self._ask_held is None:
            return
        if future.cancelled() or future.exception() is not None:
            return
        text = future.result().text.strip()
        if text:
            early.answer = self._ask_held(text, self._uid(early.index))
            log.debug("utterance %d: answering early", early.index, extra={"session": self.key})

    def _maybe_partial(self) -> None:
        interval = self.settings.partial_interval_s
        index = self._current
        if index is None or interval <= 0 or self._segmenter.buffered_s < interval:
            return
        if self._segmenter.pausing:  # the final may come next: keep the worker free for it
            return
        now = time.monotonic()
        if now - self._partial_at < interval:
            return
        future = self._worker.submit(self.key, self._segmenter.current(), partial=True)
        if future is not None:
            self._partial_at = now
            future.add_done_callback(functools.partial(self._partial, index))

    # -- transcripts (future callbacks, on the event loop) --------------------------

    def _partial(self, index: int, future: asyncio.Future[Transcript]) -> None:
        if self._closed or future.cancelled() or future.exception() is not None:
            return  # a failed partial is not worth an error: the final will tell
        if index <= self._answered:
            return  # the final was sent already; a late partial would only flicker
        transcript = future.result()
        if transcript.text:
            self._shown = index
            self._emit(
                TranscriptEvent(
                    id=self._uid(index),
                    final=False,
                    text=transcript.text,
                    audio_s=round(transcript.duration, 3),
                )
            )

    def _final(
        self,
        event: SpeechEnded,
        ended_at: float,
        answer: Held | None,
        future: asyncio.Future[Transcript],
    ) -> None:
        if self._closed or future.cancelled():
            return
        uid = self._uid(event.index)
        self._answered = max(self._answered, event.index)
        exc = future.exception()
        if exc is not None:
            self._count("error")
            code = "asr_timeout" if isinstance(exc, TimeoutError) else "asr_error"
            self._report(code, f"the question could not be heard: {exc}", uid)
            return
        transcript = future.result()
        latency = time.monotonic() - ended_at
        if self._metrics:
            self._metrics.recognition_latency.observe(latency)
        self.finals += 1
        text = transcript.text.strip()
        self._emit(
            TranscriptEvent(
                id=uid,
                final=True,
                text=text,
                audio_s=round(event.duration_s, 3),
                ended=event.reason,
                latency_ms=round(latency * 1000, 1),
            )
        )
        self._count("question" if text else "empty")
        if text and answer is not None:
            answer.confirm()  # started on this very transcript, before the utterance ended
        elif text:
            self._ask(text, uid)

    def _count(self, outcome: str) -> None:
        if self._metrics:
            self._metrics.utterances.labels(outcome).inc()
