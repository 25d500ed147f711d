"""The scheduler: one request in flight per session, newest clip wins, sessions take turns."""

from __future__ import annotations

import asyncio

from lavia_live.server.scheduler import QueueFull, Scheduler


class Recorder:
    """Jobs that log their start and wait for a release, so a test decides when they end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running: dict[str, int] = {}
        self.max_running: dict[str, int] = {}
        self.release = asyncio.Event()

    def job(self, key: str, name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            self.started.append(name)
            self.running[key] = self.running.get(key, 0) + 1
            self.max_running[key] = max(self.max_running.get(key, 0), self.running[key])
            try:
                await self.release.wait()
            finally:
                self.running[key] -= 1

        return run


async def test_a_newer_clip_replaces_a_waiting_one_and_one_runs_per_session() -> None:
    scheduler, rec = Scheduler(concurrency=4), Recorder()
    scheduler.start()
    first = scheduler.submit_clip("a", rec.job("a", "a1"))
    await asyncio.wait_for(_until(lambda: rec.started == ["a1"]), 5)
    second = scheduler.submit_clip("a", rec.job("a", "a2"))
    third = scheduler.submit_clip("a", rec.job("a", "a3"))
    assert await asyncio.wait_for(second, 5) is False  # replaced while waiting
    rec.release.set()
    assert await asyncio.wait_for(first, 5) is True
    assert await asyncio.wait_for(third, 5) is True
    assert rec.started == ["a1", "a3"] and rec.max_running["a"] == 1
    await scheduler.aclose()


async def test_sessions_take_turns_and_questions_go_before_clips() -> None:
    scheduler = Scheduler(concurrency=1)
    order: list[str] = []

    def job(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            order.append(name)

        return run

    futures = [
        scheduler.submit_clip("a", job("a-clip")),
        scheduler.submit_question("a", job("a-q1")),
        scheduler.submit_clip("b", job("b-clip")),
        scheduler.submit_question("c", job("c-q1")),
    ]
    scheduler.start()
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    # a, b, c in arrival order; a's question before a's clip; a's clip after the others.
    assert order == ["a-q1", "b-clip", "c-q1", "a-clip"]
    await scheduler.aclose()


async def test_question_queue_is_bounded_and_drop_cancels_the_request_in_flight() -> None:
    scheduler, rec = Scheduler(concurrency=1, max_questions=2), Recorder()
    scheduler.start()
    running = scheduler.submit_question("a", rec.job("a", "q1"))
    await asyncio.wait_for(_until(lambda: rec.started == ["q1"]), 5)
    waiting = [scheduler.submit_question("a", rec.job("a", f"q{i}")) for i in (2, 3)]
    try:
        scheduler.submit_question("a", rec.job("a", "q4"))
        raise AssertionError("a third waiting question was accepted")
    except QueueFull:
        pass
    await scheduler.drop("a")
    assert await running is False and [await w for w in waiting] == [False, False]
    assert rec.running["a"] == 0 and scheduler.in_flight == 0
    await scheduler.aclose()


async def test_cancel_running_stops_the_request_in_flight_and_the_waiting_clip_runs() -> None:
    scheduler, rec = Scheduler(concurrency=1), Recorder()
    scheduler.start()
    assert scheduler.cancel_running("a") is False  # nothing in flight
    stale = scheduler.submit_clip("a", rec.job("a", "a1"))
    await asyncio.wait_for(_until(lambda: rec.started == ["a1"]), 5)
    newer = scheduler.submit_clip("a", rec.job("a", "a2"))
    assert scheduler.cancel_running("a") is True
    assert await asyncio.wait_for(stale, 5) is False  # cancelled: it did not run to its end
    await asyncio.wait_for(_until(lambda: rec.started == ["a1", "a2"]), 5)
    rec.release.set()
    assert await asyncio.wait_for(newer, 5) is True
    assert rec.max_running["a"] == 1
    await scheduler.aclose()


async def test_cancel_withdraws_one_request_waiting_or_running_and_no_other() -> None:
    scheduler, rec = Scheduler(concurrency=1), Recorder()
    scheduler.start()
    first = scheduler.submit_question("a", rec.job("a", "q1"))
    await asyncio.wait_for(_until(lambda: rec.started == ["q1"]), 5)
    second = scheduler.submit_question("a", rec.job("a", "q2"))
    third = scheduler.submit_question("a", rec.job("a", "q3"))
    clip = scheduler.submit_clip("a", rec.job("a", "c1"))
    assert scheduler.cancel("a", second) is True  # waiting: forgotten
    assert await asyncio.wait_for(second, 5) is False
    assert scheduler.cancel("a", first) is True  # running: cancelled
    assert await asyncio.wait_for(first, 5) is False
    await asyncio.wait_for(_until(lambda: rec.started == ["q1", "q3"]), 5)
    assert scheduler.cancel("a", first) is False  # finished already
    assert scheduler.cancel("b", third) is False  # not that session's
    rec.release.set()
    assert await asyncio.wait_for(third, 5) is True and await asyncio.wait_for(clip, 5) is True
    assert rec.started == ["q1", "q3", "c1"]
    await scheduler.aclose()


async def _until(condition) -> None:  # type: ignore[no-untyped-def]
    while not condition():
        await asyncio.sleep(0.01)
