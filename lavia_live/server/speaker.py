"""What the assistant says aloud in one session, and when.

The :class:`Speaker` watches the events a session sends. An announced ``guidance`` is turned
into a short spoken text (a warning first, then the next step); an ``answer`` is split into
sentences as it streams (:class:`~lavia_live.speech.sentences.SentenceSplitter`; its first
piece may be a clause, "Next:"), so its start is spoken while the rest is still being
generated. One worker task takes the
sentences in order, synthesises and resamples each in the TTS thread pool (never on the
event loop, with a timeout), and queues it on the session's :class:`SpeechTrack`, keeping at
most :data:`AHEAD` sentences queued there beyond the one playing. ``speech`` events mark
when each sentence starts and ends playing. An answer's sentences go before guidance still
waiting; a newer guidance replaces guidance not spoken yet; muting drops everything and
speaks nothing until unmuted.

Barge-in: :meth:`Speaker.interrupt` (the person started talking) cuts the sentence playing
on the track's next 20 ms frame (its ``speech`` end says ``interrupted``), cancels the one
being synthesised, drops what waits, and silences the answers it was speaking or about to
speak: the rest of their text, still streaming from the model, is never spoken.
:meth:`Speaker.hold` keeps anything new from starting while the person talks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from lavia_live.config.settings import SpeechSettings
from lavia_live.errors import SpeechError
from lavia_live.server.audio import SAMPLE_RATE, SpeechTrack, TrackFull
from lavia_live.server.protocol import (
    AnswerEvent,
    GuidanceEvent,
    ServerEvent,
    SpeechEvent,
    SpeechInfo,
    VoiceInfo,
)
from lavia_live.speech.sentences import SentenceSplitter, split_sentences
from lavia_live.speech.synthesis import Synthesizer, resample

log = logging.getLogger(__name__)

AHEAD = 1  # sentences synthesised and queued on the track beyond the one playing
MAX_OPEN_ANSWERS = 4  # answers being split at once; older ones are forgotten
MAX_SILENCED = 16  # interrupted answers whose later pieces are ignored; older ones forgotten

Kind = Literal["guidance", "answer"]


@dataclass(frozen=True)
class _Sentence:
    text: str
    kind: Kind
    id: str | None


def guidance_text(event: GuidanceEvent) -> str:
    """What is said for an announced guidance: the warning, then the next step."""
    parts: list[str] = []
    if event.warning:
        parts.append(_sentence(f"Warning: {event.warning}"))
    if event.next_step.strip() and event.next_index is not None:
        parts.append(_sentence(f"Next: {event.next_step}"))
    elif event.current_step.strip():
        parts.append(_sentence(f"Now: {event.current_step}"))
    return " ".join(parts)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?" else text + "."


def render(synthesizer: Synthesizer, text: str, voice: str, rate_wpm: int) -> npt.NDArray[np.int16]:
    """One sentence as 48 kHz PCM (blocking: the TTS thread runs it)."""
    return resample(synthesizer.synthesize(text, voice, rate_wpm), SAMPLE_RATE)


class Speaker:
    def __init__(
        self,
        key: str,
        synthesizer: Synthesizer,
        executor: Executor | None,
        track: SpeechTrack,
        emit: Callable[[ServerEvent], None],
        report: Callable[[str, str, str | None], None],
        settings: SpeechSettings,
    ) -> None:
        self.key = key
        self.synthesizer = synthesizer
        self.track = track
        self.muted = False
        self.voice = synthesizer.default_voice
        self.rate_wpm = settings.rate_wpm
        self.sentences_spoken = 0
        self._executor = executor
        self._emit = emit
        self._report = report
        self._timeout_s = settings.timeout_s
        self._pending: deque[_Sentence] = deque(maxlen=settings.max_queued_sentences)
        self._answers: OrderedDict[str, SentenceSplitter] = OrderedDict()
        self._wake = asyncio.Event()
        self._generation = 0  # bumped by stop(): sentences being synthesised are dropped
        self._busy = False  # a sentence is being synthesised
        self._job: asyncio.Future[npt.NDArray[np.int16]] | None = None  # that synthesis
        self._synthesising: _Sentence | None = None
        self._on_track: list[_Sentence] = []  # given to the track, not ended yet
        self._silenced: OrderedDict[str, None] = OrderedDict()  # interrupted answers
        self._held_until = 0.0  # monotonic time until which nothing new starts playing
        self._cutting = False  # the track is being cleared: the sentence playing is cut
        self.interruptions = 0  # barge-ins that cut the voice

    def info(self) -> SpeechInfo:
        voices = [VoiceInfo(id=k, label=v) for k, v in self.synthesizer.voices.items()]
        return SpeechInfo(
            engine=self.synthesizer.name,
            voices=voices,
            voice=self.voice,
            rate_wpm=self.rate_wpm,
            muted=self.muted,
        )

    @property
    def idle(self) -> bool:
        """Nothing waiting, being synthesised or playing."""
        return not self._pending and not self._busy and self.track.pending == 0

    @property
    def playing_id(self) -> str | None:
        """The id of the answer whose sentence is playing now (None: guidance or silence)."""
        return self._on_track[0].id if self._on_track and self.track.speaking else None

    # -- what to say ----------------------------------------------------------------

    def observe(self, event: ServerEvent) -> None:
        """Every event the session sends passes here; guidance and answers are spoken."""
        if isinstance(event, GuidanceEvent):
            self.announce(guidance_text(event))
        elif isinstance(event, AnswerEvent):
            if event.final:
                self.answer_done(event.id, event.text or "")
            elif event.delta:
                self.answer_piece(event.id, event.delta)

    def announce(self, text: str) -> None:
        """Speak a guidance; it replaces guidance still waiting to be spoken."""
        if self.muted:
            return
        kept = [s for s in self._pending if s.kind != "guidance"]
        self._pending.clear()
        self._pending.extend(kept)
        self._queue([_Sentence(s, "guidance", None) for s in split_sentences(text)])

    def answer_piece(self, answer_id: str, piece: str) -> None:
        if self.muted or answer_id in self._silenced:
            return
        splitter = self._answers.get(answer_id)
        if splitter is None:
            splitter = self._answers[answer_id] = SentenceSplitter(first_clause=True)
            while len(self._answers) > MAX_OPEN_ANSWERS:
                self._answers.popitem(last=False)
        self._queue([_Sentence(s, "answer", answer_id) for s in splitter.feed(piece)])

    def answer_done(self, answer_id: str, text: str) -> None:
        splitter = self._answers.pop(answer_id, None)
        if self.muted or answer_id in self._silenced:
            return
        rest = splitter.flush() if splitter is not None else split_sentences(text)
        self._queue([_Sentence(s, "answer", answer_id) for s in rest])

    def _queue(self, sentences: list[_Sentence]) -> None:
        for sentence in sentences:
            if len(self._pending) == self._pending.maxlen:
                log.info("speech queue full: dropped %r", self._pending[0].text[:40],
                         extra={"session": self.key})  # fmt: skip
                self._pending.popleft()
            # The person asked: an answer goes before guidance that waits.
            at = len(self._pending)
            if sentence.kind == "answer":
                at = next((i for i, s in enumerate(self._pending) if s.kind == "guidance"), at)
            self._pending.insert(at, sentence)
        if sentences:
            self._wake.set()

    # -- client controls ------------------------------------------------------------

    def configure(
        self, *, muted: bool | None = None, voice: str | None = None, rate_wpm: int | None = None
    ) -> None:
        """Apply a client's speech settings (the voice is checked by the caller)."""
        if voice is not None:
            self.voice = voice
        if rate_wpm is not None:
            self.rate_wpm = rate_wpm
        if muted is not None and muted != self.muted:
            self.muted = muted
            if muted:
                self.stop()

    def stop(self) -> None:
        """Stop talking: drop what waits and what plays (a reset, a task switch, mute)."""
        self._generation += 1
        self._pending.clear()
        self._answers.clear()
        self._on_track.clear()
        if self._job is not None:
            self._job.cancel()  # the thread finishes its call; the result is not waited for
        self._cutting = True
        try:
            self.track.clear()  # the next frame is silent; the sentence playing ends, cut
        finally:
            self._cutting = False

    def interrupt(self) -> bool:
        """Barge-in: the person started talking. Stop at once (:meth:`stop`), and silence the
        answers being spoken, synthesised, waiting or still streaming: whatever more of them
        arrives is not spoken. Returns whether the voice was cut mid-sentence."""
        cut = self.track.speaking
        sentences = [*self._on_track, *self._pending]
        if self._synthesising is not None:
            sentences.append(self._synthesising)
        answers = {s.id for s in sentences if s.kind == "answer" and s.id is not None}
        for answer_id in [*answers, *self._answers]:
            self._silenced[answer_id] = None
            self._silenced.move_to_end(answer_id)
        while len(self._silenced) > MAX_SILENCED:
            self._silenced.popitem(last=False)
        self.stop()
        if cut:
            self.interruptions += 1
        return cut

    def hold(self, seconds: float | None) -> None:
        """Start nothing new for ``seconds`` (the person is talking), or again now (None).
        Sentences keep queueing meanwhile."""
        self._held_until = time.monotonic() + seconds if seconds else 0.0
        self._wake.set()

    @property
    def held(self) -> bool:
        return time.monotonic() < self._held_until

    # -- the worker -----------------------------------------------------------------

    async def run(self) -> None:
        """Speak queued sentences until cancelled (the session owns this task)."""
        loop = asyncio.get_running_loop()
        while True:
            sentence = await self._next()
            generation = self._generation
            self._busy = True
            self._synthesising = sentence
            job = self._job = loop.run_in_executor(
                self._executor, render, self.synthesizer, sentence.text, self.voice, self.rate_wpm
            )
            try:
                done, _ = await asyncio.wait({job}, timeout=self._timeout_s)
            finally:
                self._busy = False
                self._job = self._synthesising = None
                if not job.done():
                    job.cancel()
            if job.cancelled():  # stopped or interrupted while it was synthesised
                continue
            if not done:
                msg = f"speech synthesis took over {self._timeout_s:g} s"
                self._report("speech_timeout", msg, sentence.id)
                continue
            try:
                pcm = job.result()
            except SpeechError as exc:
                self._report("speech_error", str(exc), sentence.id)
                continue
            if generation != self._generation or self.muted or pcm.shape[0] == 0:
                continue
            while self.track.pending > AHEAD:
                self.track.changed.clear()
                await self.track.changed.wait()
            if generation != self._generation:
                continue
            try:
                self.track.play(pcm, self._marker("start", sentence), self._marker("end", sentence))
            except TrackFull as exc:
                log.warning("%s: dropped %r", exc, sentence.text[:40], extra={"session": self.key})
            else:
                self._on_track.append(sentence)

    async def _next(self) -> _Sentence:
        """The next sentence to speak, once there is one and nothing holds it back."""
        while True:
            held_s = self._held_until - time.monotonic()
            if self._pending and held_s <= 0:
                return self._pending.popleft()
            self._wake.clear()
            if self._pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), held_s)
            else:
                await self._wake.wait()

    def _marker(self, state: Literal["start", "end"], sentence: _Sentence) -> Callable[[], None]:
        def mark() -> None:
            cut = False
            if state == "end":
                self.sentences_spoken += 1
                cut = self._cutting
                with contextlib.suppress(ValueError):
                    self._on_track.remove(sentence)
            self._emit(
                SpeechEvent(
                    state=state, text=sentence.text, kind=sentence.kind, id=sentence.id,
                    interrupted=cut,
                )
            )  # fmt: skip

        return mark
