"""One speech recognition worker for every session of a server.

The worker holds one faster-whisper model (loaded once, in its own thread) and transcribes
one utterance at a time in that thread, never on the event loop. Sessions :meth:`submit`
requests into one bounded queue: a final transcript (the end of an utterance) is refused
with :class:`RecognizerBusy` when the queue is full; a partial one (the utterance so far) is
taken only when the worker is idle and nothing waits, so partials never delay a final.
A final replaces the same session's partial still waiting. Each request's future gets the
:class:`~lavia_live.speech.asr.Transcript`, or the error: :class:`SpeechError` from the
recogniser, or :class:`TimeoutError` after ``timeout_s``.

Batching is not done: the worker is busy with one request at a time (an utterance up to
``encoder_window_s`` long is encoded as that many seconds, see
:mod:`lavia_live.speech.asr`), so several sessions speaking at once wait their turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lavia_live.config.settings import ListeningSettings
from lavia_live.errors import SpeechError
from lavia_live.speech.asr import Transcript, TranscriptionOptions, load_model, transcribe_pcm

__all__ = ["RecognitionWorker", "RecognizerBusy", "Transcribe", "whisper_transcriber"]

log = logging.getLogger(__name__)

Transcribe = Callable[[npt.NDArray[np.float32]], Transcript]


class RecognizerBusy(Exception):
    """The recognition queue is full."""


def whisper_transcriber(settings: ListeningSettings) -> tuple[Transcribe, Callable[[], None]]:
    """The transcribe function the settings name, and a function that loads its model."""
    options = TranscriptionOptions(
        model=settings.model,
        device=settings.device,
        compute_type=settings.compute_type,
        beam_size=settings.beam_size,
        window_s=settings.encoder_window_s,
    )

    def transcribe(audio: npt.NDArray[np.float32]) -> Transcript:
        return transcribe_pcm(audio, options)

    def load() -> None:
        load_model(options.model, options.device, options.compute_type)

    return transcribe, load


@dataclass
class _Request:
    key: str
    audio: npt.NDArray[np.float32] = field(repr=False)
    partial: bool
    future: asyncio.Future[Transcript]


class RecognitionWorker:
    def __init__(
        self,
        transcribe: Transcribe,
        *,
        queue_size: int = 8,
        timeout_s: float = 30.0,
        load: Callable[[], None] | None = None,
    ) -> None:
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._transcribe = transcribe
        self._load = load
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._thread: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._current: _Request | None = None
        self.transcribed = 0  # requests answered, partials included
        self.last_seconds = 0.0  # recognition time of the last request

    @property
    def busy(self) -> bool:
        """A request is being transcribed or waits."""
        return self._current is not None or bool(self._queue)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        """Load the model (in the worker's thread), then start taking requests (again,
        after :meth:`aclose`)."""
        thread = self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lavia-asr")
        if self._load is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._load)
        self._task = asyncio.create_task(self._run(thread), name="lavia-recognizer")

    async def aclose(self) -> None:
        """Stop: requests waiting are cancelled, the thread is joined."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None
        for request in self._queue:
            request.future.cancel()
        self._queue.clear()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.shutdown, wait=True)
            self._thread = None

    # -- requests -------------------------------------------------------------------

    def submit(
        self, key: str, audio: npt.NDArray[np.float32], *, partial: bool = False
    ) -> asyncio.Future[Transcript] | None:
        """Queue one utterance of session ``key``. A partial is skipped (None) while the
        worker is busy; a final raises :class:`RecognizerBusy` when the queue is full."""
        if self._task is None:
            raise SpeechError("the recognition worker is not running")
        self._drop(lambda r: r.future.done())  # cancelled while waiting: no place held
        if partial and self.busy:
            return None
        if not partial:
            self._drop(lambda r: r.key == key and r.partial)
            if len(self._queue) >= self.queue_size:
                raise RecognizerBusy(
                    f"speech recognition is busy ({self.queue_size} utterances waiting)"
                )
        future: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(key, audio, partial, future))
        self._wake.set()
        return future

    def drop(self, key: str) -> None:
        """Cancel what session ``key`` has waiting (it closed)."""
        self._drop(lambda r: r.key == key)
        if self._current is not None and self._current.key == key:
            self._current.future.cancel()

    def _drop(self, match: Callable[[_Request], bool]) -> None:
        kept = deque(r for r in self._queue if not match(r))
        for request in self._queue:
            if match(request):
                request.future.cancel()
        self._queue = kept

    # -- the worker -----------------------------------------------------------------

    async def _run(self, thread: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            request = self._current = self._queue.popleft()
            if request.future.done():  # cancelled while it waited
                self._current = None
                continue
            started = time.perf_counter()
            try:
                job = loop.run_in_executor(thread, self._transcribe, request.audio)
                transcript = await asyncio.wait_for(job, self.timeout_s)
            except asyncio.CancelledError:
                request.future.cancel()
                raise
            except TimeoutError:
                msg = f"speech recognition took over {self.timeout_s:g} s"
                _settle(request.future, exc=TimeoutError(msg))
            except Exception as exc:  # noqa: BLE001 - a recogniser may raise anything
                log.warning("recognition failed: %r", exc, extra={"session": request.key})
                error = exc if isinstance(exc, SpeechError) else SpeechError(str(exc) or repr(exc))
                _settle(request.future, exc=error)
            else:
                _settle(request.future, result=transcript)
            finally:
                self._current = None
            self.transcribed += 1
            self.last_seconds = time.perf_counter() - started


def _settle(
    future: asyncio.Future[Transcript],
    *,
    result: Transcript | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)
