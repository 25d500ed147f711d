"""What the assistant says aloud in one session, and when.

The :class:`Speaker` watches the events a session sends. An announced ``guidance`` is turned
into a short spoken text (a warning first, then the next step); an ``answer`` is split into
sentences as it streams (:class:`~lavia_live.speech.sentences.SentenceSplitter`), so its
first sentence is spoken while the rest is still being generated. One worker task takes the
sentences in order, synthesises and resamples each in the TTS thread pool (never on the
event loop, with a timeout), and queues it on the session's :class:`SpeechTrack`, keeping at
most :data:`AHEAD` sentences queued there beyond the one playing. ``speech`` events mark
when each sentence starts and ends playing. An answer's sentences go before guidance still
waiting; a newer guidance replaces guidance not spoken yet; muting drops everything and
speaks nothing until unmuted.
"""

from __future__ import annotations

import asyncio
import logging
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
        if self.muted:
            return
        splitter = self._answers.get(answer_id)
        if splitter is None:
            splitter = self._answers[answer_id] = SentenceSplitter()
            while len(self._answers) > MAX_OPEN_ANSWERS:
                self._answers.popitem(last=False)
        self._queue([_Sentence(s, "answer", answer_id) for s in splitter.feed(piece)])

    def answer_done(self, answer_id: str, text: str) -> None:
        splitter = self._answers.pop(answer_id, None)
        if self.muted:
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
        self.track.clear()

    # -- the worker -----------------------------------------------------------------

    async def run(self) -> None:
        """Speak queued sentences until cancelled (the session owns this task)."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            sentence = self._pending.popleft()
            generation = self._generation
            self._busy = True
            try:
                pcm = await asyncio.wait_for(
                    loop.run_in_executor(
                        self._executor,
                        render,
                        self.synthesizer,
                        sentence.text,
                        self.voice,
                        self.rate_wpm,
                    ),
                    self._timeout_s,
                )
            except SpeechError as exc:
                self._report("speech_error", str(exc), sentence.id)
                continue
            except TimeoutError:
                msg = f"speech synthesis took over {self._timeout_s:g} s"
                self._report("speech_timeout", msg, sentence.id)
                continue
            finally:
                self._busy = False
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

    def _marker(self, state: Literal["start", "end"], sentence: _Sentence) -> Callable[[], None]:
        def mark() -> None:
            if state == "end":
                self.sentences_spoken += 1
            self._emit(
                SpeechEvent(state=state, text=sentence.text, kind=sentence.kind, id=sentence.id)
            )

        return mark
