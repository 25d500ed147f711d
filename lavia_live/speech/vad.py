"""Utterances in a live stream of 16 kHz audio, found with the Silero VAD that faster-whisper
ships (``faster_whisper.vad``).

:class:`SileroStream` gives the speech probability of each 32 ms window (512 samples) as the
audio arrives, carrying the model's recurrent state and context from one chunk to the next,
so a stream fed in small pieces scores exactly as the whole recording would. The ONNX model
is loaded once per process and shared; each stream keeps only its own state.

:class:`UtteranceSegmenter` turns those probabilities into utterances: one starts at the
first window at or above ``threshold`` (with ``pad_ms`` of audio before it) and ends once
the probability has stayed below ``threshold - 0.15`` for ``min_silence_ms`` (keeping
``pad_ms`` of that silence), or when it reaches ``max_utterance_s``, where it is cut and the
speech that goes on starts the next one. Utterances with less than ``min_speech_ms`` of
voiced windows are dropped. :class:`SpeechStarted` is returned by the very :meth:`feed` that
scores that first voiced window, one window (32 ms) into the speech at best, long before the
utterance ends: the live server stops the assistant's voice on it (barge-in). While
:attr:`UtteranceSegmenter.holding` (push-to-talk held) silence ends nothing: :meth:`flush`
does, at the release. Once ``early_ms`` of silence has followed the speech,
:meth:`UtteranceSegmenter.ending` gives the speech the utterance will end with if no more
comes (with the silence so far, up to ``pad_ms``), so recognition can start before the rest
of ``min_silence_ms`` has passed; the :attr:`SpeechEnded.spoken` of the end tells whether
it did. Memory is
fixed: one preallocated buffer of the longest utterance. Calls block (the model runs on the
calling thread); one stream, one caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from faster_whisper.vad import get_vad_model

from lavia_live.errors import SpeechError
from lavia_live.speech.asr import SAMPLE_RATE

__all__ = [
    "WINDOW",
    "SegmenterOptions",
    "SileroStream",
    "SpeechEnded",
    "SpeechStarted",
    "UtteranceSegmenter",
]

log = logging.getLogger(__name__)

WINDOW = 512  # samples per VAD window at 16 kHz (32 ms)
_CONTEXT = 64  # samples of the previous window the model sees before each window
_HYSTERESIS = 0.15  # speech goes on until the probability falls this far below threshold

Float32 = npt.NDArray[np.float32]
EndReason = Literal["silence", "max_length", "ended", "released"]


class SileroStream:
    """Speech probabilities of a stream of 16 kHz mono float audio, window by window."""

    def __init__(self) -> None:
        try:
            self._session: Any = get_vad_model().session
        except (RuntimeError, OSError) as exc:
            raise SpeechError(f"cannot load the Silero VAD model: {exc}") from exc
        self._pending = np.zeros(0, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far (state, context, samples short of a window)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: Float32) -> tuple[Float32, Float32]:
        """Add samples; returns the windows they complete, shape (n, 512), and each
        window's speech probability, shape (n,). Samples short of a window wait."""
        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        count = audio.shape[0] // WINDOW
        self._pending = audio[count * WINDOW :]
        windows = audio[: count * WINDOW].reshape(count, WINDOW)
        if count == 0:
            return windows, np.zeros(0, dtype=np.float32)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT:]])
        batch = np.concatenate([contexts, windows], axis=1)
        try:
            probs, self._h, self._c = self._session.run(
                None, {"input": batch, "h": self._h, "c": self._c}
            )
        except Exception as exc:  # onnxruntime raises its own error types
            raise SpeechError(f"the Silero VAD failed: {exc}") from exc
        self._context = windows[-1, -_CONTEXT:].copy()
        return windows, np.asarray(probs, dtype=np.float32).reshape(-1)


@dataclass(frozen=True)
class SegmenterOptions:
    threshold: float = 0.5
    min_silence_ms: int = 500
    min_speech_ms: int = 250
    pad_ms: int = 200
    max_utterance_s: float = 15.0
    early_ms: int = 64  # silence after which ending() gives the speech so far


@dataclass(frozen=True)
class SpeechStarted:
    """An utterance began ``at_s`` seconds into the stream."""

    index: int
    at_s: float


@dataclass(frozen=True)
class SpeechEnded:
    """An utterance ended; ``audio`` is None when it was too short to keep."""

    index: int
    audio: Float32 | None
    reason: EndReason
    start_s: float
    end_s: float
    spoken: int = 0  # samples of the utterance up to the end of its last speech

    @property
    def duration_s(self) -> float:
        return 0.0 if self.audio is None else self.audio.shape[0] / SAMPLE_RATE


SegmentEvent = SpeechStarted | SpeechEnded


class UtteranceSegmenter:
    """Utterances in a stream of 16 kHz mono float audio (see the module docstring)."""

    def __init__(self, options: SegmenterOptions | None = None) -> None:
        self.options = opts = options or SegmenterOptions()
        self.vad = SileroStream()
        self._pad = int(opts.pad_ms * SAMPLE_RATE / 1000) // WINDOW * WINDOW
        self._early = max(int(opts.early_ms * SAMPLE_RATE / 1000) // WINDOW * WINDOW, WINDOW)
        self._min_silence = int(opts.min_silence_ms * SAMPLE_RATE / 1000)
        self._min_speech = int(opts.min_speech_ms * SAMPLE_RATE / 1000)
        longest = int(opts.max_utterance_s * SAMPLE_RATE) // WINDOW * WINDOW
        self._max = max(longest, self._pad + WINDOW)
        self._low = max(opts.threshold - _HYSTERESIS, 0.01)
        self._buffer = np.zeros(self._max, dtype=np.float32)
        self._preroll = np.zeros(self._pad, dtype=np.float32)
        self._preroll_len = 0
        self.utterances = 0  # utterances started so far
        self._clock = 0  # samples of the stream scored so far
        self.holding = False  # push-to-talk is held: silence does not end an utterance
        self._reset_utterance()
        self.active = False

    def _reset_utterance(self) -> None:
        self.active = False
        self._length = 0
        self._voiced = 0
        self._silence = 0
        self._start = 0

    @property
    def buffered_s(self) -> float:
        """Seconds of the utterance in progress (0 when none is)."""
        return self._length / SAMPLE_RATE if self.active else 0.0

    @property
    def pausing(self) -> bool:
        """The utterance in progress has gone quiet (it may be about to end)."""
        return self.active and self._silence > 0

    def ending(self) -> tuple[int, Float32] | None:
        """While ``early_ms`` or more of silence follows the speech: the utterance's
        :attr:`SpeechEnded.spoken` if it ends without more speech, and its audio so far
        (the speech and up to ``pad_ms`` of the silence after it: from ``pad_ms`` of
        silence on, the audio :meth:`feed` or :meth:`flush` will end it with); None
        otherwise, or if it is too short to keep."""
        if not self.active or self._silence < self._early:
            return None
        if self._voiced < self._min_speech:
            return None
        spoken = self._length - self._silence
        return spoken, self._buffer[: spoken + min(self._silence, self._pad)].copy()

    def current(self) -> Float32:
        """A copy of the utterance so far (for a partial transcript)."""
        return self._buffer[: self._length].copy() if self.active else np.zeros(0, np.float32)

    def feed(self, samples: Float32) -> list[SegmentEvent]:
        """Add audio; returns the utterances it starts and ends, in order."""
        windows, probs = self.vad.feed(samples)
        events: list[SegmentEvent] = []
        for window, prob in zip(windows, probs, strict=True):
            self._clock += WINDOW
            if not self.active:
                if prob >= self.options.threshold:
                    self._begin(events)
                    self._append(window)
                    self._voiced += WINDOW
                else:
                    self._remember(window)
                continue
            self._append(window)
            if prob >= self.options.threshold:
                self._voiced += WINDOW
            self._silence = self._silence + WINDOW if prob < self._low else 0
            if self._silence >= self._min_silence and not self.holding:
                self._end(events, "silence")
            elif self._length >= self._max:
                self._end(events, "max_length")
                if self._silence == 0:  # still speaking: the rest is the next utterance
                    self._begin(events, preroll=False)
        return events

    def flush(self, reason: EndReason = "ended") -> list[SegmentEvent]:
        """The stream stopped (the microphone went away, or push-to-talk was released): end
        the utterance in progress, for ``reason``."""
        events: list[SegmentEvent] = []
        if self.active:
            self._end(events, reason)
        self.vad.reset()
        self._preroll_len = 0
        return events

    def reset(self) -> list[SegmentEvent]:
        """Forget the utterance in progress (ended without audio) and the VAD's state: the
        audio heard must not count."""
        events: list[SegmentEvent] = []
        if self.active:
            start = self._start / SAMPLE_RATE
            events.append(SpeechEnded(self.utterances, None, "ended", start, start))
        self._reset_utterance()
        self.vad.reset()
        self._preroll_len = 0
        return events

    # -- internals ------------------------------------------------------------------

    def _remember(self, window: Float32) -> None:
        if self._pad == 0:
            return
        self._preroll = np.roll(self._preroll, -WINDOW)
        self._preroll[-WINDOW:] = window
        self._preroll_len = min(self._preroll_len + WINDOW, self._pad)

    def _begin(self, events: list[SegmentEvent], *, preroll: bool = True) -> None:
        self.active = True
        self._length = self._voiced = self._silence = 0
        if preroll and self._preroll_len:
            self._buffer[: self._preroll_len] = self._preroll[self._pad - self._preroll_len :]
            self._length = self._preroll_len
        self._preroll_len = 0
        # With a pre-roll, the window that starts it is appended next; without, it is gone.
        self._start = self._clock - self._length - (WINDOW if preroll else 0)
        self.utterances += 1
        events.append(SpeechStarted(self.utterances, self._start / SAMPLE_RATE))

    def _append(self, window: Float32) -> None:
        self._buffer[self._length : self._length + WINDOW] = window
        self._length += WINDOW

    def _end(self, events: list[SegmentEvent], reason: EndReason) -> None:
        keep = self._length - max(self._silence - self._pad, 0)
        audio = self._buffer[:keep].copy() if self._voiced >= self._min_speech else None
        start = self._start / SAMPLE_RATE
        end_s = (self._start + keep) / SAMPLE_RATE
        spoken = self._length - self._silence
        events.append(SpeechEnded(self.utterances, audio, reason, start, end_s, spoken))
        if reason == "silence" and self._pad:  # the silence heard is the next one's pre-roll
            tail = self._buffer[self._length - min(self._silence, self._pad) : self._length]
            self._preroll[self._pad - tail.shape[0] :] = tail
            self._preroll_len = tail.shape[0]
        self._reset_utterance()
