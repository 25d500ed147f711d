"""Dynamic batching of requests to one in-process model.

Live sessions each have at most one guidance request in flight; with several sessions their
requests arrive independently, a fraction of a second apart. :class:`Batcher` gathers them:
when the model is free, the requests waiting (after ``window_s``, which lets the ones
arriving together join) run as one batch of at most ``max_batch``; requests that arrive
while a batch runs wait and go together in the next. With one session nothing waits for
anything: its request runs as soon as the model is free, as without batching.

The batch runs in a worker thread under the engine's lock (the model serves one batch or
one streamed answer at a time). A request whose caller gives up (cancelled) is dropped from
the batch if it has not started; once started, the batch runs on for the others, and is
stopped (``stop`` set) only when every caller in it has given up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Batcher"]

log = logging.getLogger(__name__)

R = TypeVar("R")
RunBatch = Callable[[Sequence[R], threading.Event], list[str]]


@dataclass
class _Waiting(Generic[R]):
    request: R
    future: asyncio.Future[str]


class Batcher(Generic[R]):
    def __init__(
        self, run: RunBatch[R], lock: asyncio.Lock, *, max_batch: int, window_s: float = 0.0
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self._run = run
        self._lock = lock
        self.max_batch = max_batch
        self.window_s = window_s
        self._waiting: list[_Waiting[R]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # batches run
        self.largest = 0  # the most requests one batch held

    async def submit(self, request: R) -> str:
        """Run ``request`` in the next batch; its answer, or the batch's error."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(request, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="lavia-batcher")
        return await future

    async def aclose(self) -> None:
        """Stop: the batch running is stopped, requests waiting are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait({self._worker})
            self._worker = None
        for waiting in self._waiting:
            waiting.future.cancel()
        self._waiting.clear()

    async def _work(self) -> None:
        while self._waiting:
            async with self._lock:  # the model is free
                if self.window_s and len(self._waiting) < self.max_batch:
                    await asyncio.sleep(self.window_s)  # the batching window
                batch = [w for w in self._waiting[: self.max_batch] if not w.future.done()]
                del self._waiting[: self.max_batch]
                if batch:
                    await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Waiting[R]]) -> None:
        stop = threading.Event()

        def gave_up(_: asyncio.Future[str]) -> None:
            if all(w.future.cancelled() for w in batch):
                stop.set()

        for waiting in batch:
            waiting.future.add_done_callback(gave_up)
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        work = asyncio.ensure_future(asyncio.to_thread(self._run, [w.request for w in batch], stop))
        try:
            answers = await asyncio.shield(work)
        except asyncio.CancelledError:  # closed: stop the thread, wait for it, tell the callers
            stop.set()
            await asyncio.wait({work})
            if not work.cancelled():
                work.exception()  # retrieved: nobody is left to take it
            for waiting in batch:
                waiting.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every caller in the batch gets it
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        for waiting, answer in zip(batch, answers, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(answer)
