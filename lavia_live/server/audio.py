"""The assistant's voice as a WebRTC audio track: 20 ms frames of 48 kHz mono, paced by
their timestamps, silence when there is nothing to say.

:meth:`SpeechTrack.play` queues one utterance (int16 PCM at 48 kHz) with callbacks for when
its first sample goes out and when its last one has; aiortc's sender pulls :meth:`recv` on
the event loop, so the callbacks run there. The queue holds at most ``max_queued_s`` seconds
of audio; :meth:`clear` drops it all at once (mute, reset, barge-in): the next frame
:meth:`recv` gives is silent.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

__all__ = ["FRAME_SAMPLES", "SAMPLE_RATE", "SpeechTrack", "TrackFull"]

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
TIME_BASE = Fraction(1, SAMPLE_RATE)


class TrackFull(Exception):
    """More audio than the track may hold was queued."""


@dataclass
class _Utterance:
    pcm: npt.NDArray[np.int16]
    on_start: Callable[[], None]
    on_end: Callable[[], None]
    position: int = 0
    started: bool = False
    ended: bool = field(default=False)

    @property
    def left(self) -> int:
        return int(self.pcm.shape[0]) - self.position


class SpeechTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, *, max_queued_s: float = 120.0, paced: bool = True) -> None:
        super().__init__()
        self.max_queued_samples = int(max_queued_s * SAMPLE_RATE)
        self.paced = paced  # False: frames as fast as they are pulled (tests)
        self.changed = asyncio.Event()  # set whenever an utterance ends or is dropped
        self._queue: deque[_Utterance] = deque()
        self._queued_samples = 0
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.speech_frames_sent = 0
        self.voiced_at = -float("inf")  # monotonic time the last frame with speech went out

    @property
    def pending(self) -> int:
        """Utterances queued or playing."""
        return len(self._queue)

    @property
    def queued_s(self) -> float:
        """Seconds of speech queued and not yet sent (the rest of the one playing included)."""
        return self._queued_samples / SAMPLE_RATE

    @property
    def playing_left_s(self) -> float:
        """Seconds left of the utterance playing now (0 when none is)."""
        return self._queue[0].left / SAMPLE_RATE if self.speaking else 0.0

    @property
    def speaking(self) -> bool:
        return bool(self._queue) and self._queue[0].started

    def voiced_within(self, seconds: float) -> bool:
        """Speech is playing, or the last of it went out less than ``seconds`` ago."""
        return self.speaking or time.monotonic() - self.voiced_at < seconds

    def play(
        self,
        pcm: npt.NDArray[np.int16],
        on_start: Callable[[], None] = lambda: None,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        """Queue one utterance (mono int16 at 48 kHz); :class:`TrackFull` beyond the limit."""
        if self.readyState != "live":
            raise MediaStreamError("the track has ended")
        samples = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
        if self._queued_samples + samples.shape[0] > self.max_queued_samples:
            raise TrackFull(f"at most {self.max_queued_samples / SAMPLE_RATE:g} s may be queued")
        self._queue.append(_Utterance(samples, on_start, on_end))
        self._queued_samples += int(samples.shape[0])

    def clear(self) -> None:
        """Drop everything queued; the utterance playing ends now (its ``on_end`` runs)."""
        queue, self._queue = self._queue, deque()
        self._queued_samples = 0
        for utterance in queue:
            if utterance.started and not utterance.ended:
                utterance.ended = True
                utterance.on_end()
        self.changed.set()

    def stop(self) -> None:
        self._queue.clear()
        self._queued_samples = 0
        self.changed.set()
        super().stop()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
            self._pts = 0
        else:
            self._pts += FRAME_SAMPLES
            if self.paced:
                wait = self._start + self._pts / SAMPLE_RATE - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
        samples = self._next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self.frames_sent += 1
        return frame

    def _next_samples(self) -> npt.NDArray[np.int16]:
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._queue:
            utterance = self._queue[0]
            if not utterance.started:
                utterance.started = True
                utterance.on_start()
            take = min(FRAME_SAMPLES - filled, utterance.left)
            start = utterance.position
            out[filled : filled + take] = utterance.pcm[start : start + take]
            utterance.position += take
            filled += take
            self._queued_samples -= take
            if utterance.left == 0:
                self._queue.popleft()
                utterance.ended = True
                utterance.on_end()
                self.changed.set()
        if filled:
            self.speech_frames_sent += 1
            self.voiced_at = time.monotonic()
        return out
