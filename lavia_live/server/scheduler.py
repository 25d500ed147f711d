"""Who gets the model next: at most one request in flight per session, fair across sessions.

Each session (a key) has one slot for a guidance clip and a short queue of questions. A
newer clip replaces a clip still waiting (the model should look at the latest 15 seconds,
not catch up on old ones); questions wait their turn and go before a waiting clip. Sessions
with work take turns in arrival order: a session goes to the back of the line after each of
its requests, so one busy session cannot starve the others. ``concurrency`` requests run at
once across all sessions (1 for an in-process model, more for a server such as SGLang).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class QueueFull(Exception):
    """A session asked more questions than may wait at once."""


@dataclass
class _Pending:
    job: Job
    done: asyncio.Future[bool]  # True when it ran, False when replaced or dropped


@dataclass
class _Slot:
    clip: _Pending | None = None
    questions: deque[_Pending] = field(default_factory=deque)
    running: asyncio.Task[None] | None = None
    current: _Pending | None = None  # the request ``running`` runs
    queued: bool = False

    def take(self) -> _Pending | None:
        if self.questions:
            return self.questions.popleft()
        pending, self.clip = self.clip, None
        return pending

    def has_work(self) -> bool:
        return bool(self.questions) or self.clip is not None


def _settle(pending: _Pending | None, ran: bool) -> None:
    if pending is not None and not pending.done.done():
        pending.done.set_result(ran)


class Scheduler:
    def __init__(self, concurrency: int = 1, *, max_questions: int = 3) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.max_questions = max_questions
        self._slots: dict[str, _Slot] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"lavia-scheduler-{i}")
                for i in range(self.concurrency)
            ]

    @property
    def in_flight(self) -> int:
        return sum(1 for s in self._slots.values() if s.running is not None)

    def busy(self, key: str) -> bool:
        slot = self._slots.get(key)
        return slot is not None and slot.running is not None

    def submit_clip(self, key: str, job: Job) -> asyncio.Future[bool]:
        """Queue a guidance request; it replaces one of this session's still waiting."""
        slot = self._slots.setdefault(key, _Slot())
        _settle(slot.clip, False)
        slot.clip = _Pending(job, asyncio.get_running_loop().create_future())
        self._enqueue(key, slot)
        return slot.clip.done

    def submit_question(self, key: str, job: Job) -> asyncio.Future[bool]:
        """Queue a question; :class:`QueueFull` when ``max_questions`` already wait."""
        slot = self._slots.setdefault(key, _Slot())
        if len(slot.questions) >= self.max_questions:
            raise QueueFull(f"at most {self.max_questions} questions can wait at once")
        pending = _Pending(job, asyncio.get_running_loop().create_future())
        slot.questions.append(pending)
        self._enqueue(key, slot)
        return pending.done

    def drop_pending(self, key: str) -> None:
        """Forget this session's waiting requests (a reset); one in flight runs on."""
        slot = self._slots.get(key)
        if slot is not None:
            _settle(slot.clip, False)
            slot.clip = None
            while slot.questions:
                _settle(slot.questions.popleft(), False)

    def cancel_running(self, key: str) -> bool:
        """Cancel this session's request in flight (superseded, or a reset); its waiting
        requests then run as usual. False when none is in flight."""
        slot = self._slots.get(key)
        if slot is None or slot.running is None or slot.running.done():
            return False
        slot.running.cancel()
        return True

    def cancel(self, key: str, done: asyncio.Future[bool]) -> bool:
        """Withdraw one request (``done`` is the future its submit returned): forgotten if
        it waits, cancelled if it runs. False when it has already finished."""
        slot = self._slots.get(key)
        if slot is None or done.done():
            return False
        for pending in slot.questions:
            if pending.done is done:
                slot.questions.remove(pending)
                _settle(pending, False)
                return True
        if slot.clip is not None and slot.clip.done is done:
            _settle(slot.clip, False)
            slot.clip = None
            return True
        if slot.current is not None and slot.current.done is done:
            return self.cancel_running(key)
        return False

    async def drop(self, key: str) -> None:
        """Forget a session: its waiting requests, and cancel the one in flight."""
        self.drop_pending(key)
        slot = self._slots.pop(key, None)
        if slot is not None and slot.running is not None:
            slot.running.cancel()
            await asyncio.wait({slot.running})

    async def aclose(self) -> None:
        for key in list(self._slots):
            await self.drop(key)
        for worker in self._workers:
            worker.cancel()
        if self._workers:
            await asyncio.wait(self._workers)
        self._workers = []

    def _enqueue(self, key: str, slot: _Slot) -> None:
        if not slot.queued and slot.running is None:
            slot.queued = True
            self._ready.put_nowait(key)

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            slot = self._slots.get(key)
            if slot is None:
                continue  # dropped while waiting
            slot.queued = False
            pending = slot.take()
            if pending is None:
                continue
            task = asyncio.create_task(self._run(pending.job), name=f"lavia-job-{key}")
            slot.running, slot.current = task, pending
            try:
                await asyncio.wait({task})
            finally:  # also when this worker is cancelled at shutdown
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
                _settle(pending, not task.cancelled())
                slot.running = slot.current = None
            if self._slots.get(key) is slot and slot.has_work():
                self._enqueue(key, slot)

    @staticmethod
    async def _run(job: Job) -> None:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:  # a job reports its own errors; this is a bug in one
            log.exception("a scheduled model request failed")
