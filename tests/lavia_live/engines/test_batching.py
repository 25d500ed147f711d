"""Batched guidance on the embedded model (the answers of one request at a time, for clips
of different lengths and tasks, with questions streaming in between), and the batcher's
rules: what arrives while a batch runs makes the next one, errors reach every caller of
their batch, a batch every caller gave up on is stopped, closing cancels what waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from lavia_live.contract.prompt import build_guidance_prompt, build_question_prompt
from lavia_live.engines.base import GenerationOptions, Usage, complete
from lavia_live.engines.batching import Batcher
from lavia_live.engines.local import LocalEngine
from lavia_live.models import EMBEDDED, model_folder
from tests.lavia_live.engines.clips import COOKING, TASK, noise_frames


async def test_a_batch_answers_as_one_request_at_a_time_does() -> None:
    folder = model_folder(EMBEDDED)
    single = LocalEngine(folder)
    batched = LocalEngine(folder, max_batch=8)
    assert single.max_concurrency == 1 and batched.max_concurrency == 8
    assert batched.batcher is not None
    frames = noise_frames(30, seed=11)
    asks = [  # clips of 4 to 15 frames, two tasks: prompts of different lengths
        (TASK, frames[0:15]),
        (TASK, frames[3:7]),
        (COOKING, frames[7:16]),
        (TASK, frames[10:25]),
        (COOKING, frames[20:26]),
        (TASK, frames[1:13]),
    ]
    options = [GenerationOptions(96, usage=Usage()) for _ in asks]
    expected = [
        await complete(single, build_guidance_prompt(task, len(clip)), clip, GenerationOptions(96))
        for task, clip in asks
    ]
    question = build_question_prompt(TASK, 15, "what do I do next?")
    expected_answer = await complete(single, question, frames[0:15], GenerationOptions(40))
    got = await asyncio.gather(
        *(
            complete(batched, build_guidance_prompt(task, len(clip)), clip, opts)
            for (task, clip), opts in zip(asks, options, strict=True)
        ),
        complete(batched, question, frames[0:15], GenerationOptions(40)),  # streams between
    )
    assert list(got[:-1]) == expected and got[-1] == expected_answer
    assert batched.batcher.batches == 1 and batched.batcher.largest == len(asks)
    for opts in options:  # each request's own token counts
        assert (
            opts.usage is not None
            and opts.usage.prompt_tokens > 100
            and opts.usage.completion_tokens > 5
        )
    # One session alone: its request is a batch of one, run as soon as the model is free.
    await complete(batched, build_guidance_prompt(TASK, 4), frames[0:4], GenerationOptions(96))
    assert batched.batcher.batches == 2
    await batched.aclose()


class Recorder:
    """A batch function that records its batches and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.stopped: list[bool] = []
        self.fail: set[int] = set()

    def __call__(self, requests: Sequence[int], stop: threading.Event) -> list[str]:
        self.batches.append(list(requests))
        self.started.set()
        while not self.release.wait(0.01):
            if stop.is_set():
                break
        self.stopped.append(stop.is_set())
        if self.fail & set(requests):
            raise RuntimeError("out of memory")
        return [f"answer {r}" for r in requests]


async def held_until_started(recorder: Recorder) -> None:
    await asyncio.to_thread(recorder.started.wait, 10)
    recorder.started.clear()


async def test_requests_that_arrive_during_a_batch_make_the_next() -> None:
    recorder = Recorder()
    batcher: Batcher[int] = Batcher(recorder, asyncio.Lock(), max_batch=3)
    recorder.release.clear()
    first = asyncio.create_task(batcher.submit(0))
    await held_until_started(recorder)  # batch [0] is running
    later = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)  # let them queue (no timing involved: they wait on the batch)
    recorder.release.set()
    answers = await asyncio.gather(first, *later)
    assert answers == [f"answer {i}" for i in range(6)]
    assert recorder.batches == [[0], [1, 2, 3], [4, 5]]
    await batcher.aclose()


async def test_an_error_reaches_every_caller_of_its_batch_only() -> None:
    recorder = Recorder()
    recorder.fail = {2}
    batcher: Batcher[int] = Batcher(recorder, asyncio.Lock(), max_batch=2)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert recorder.batches == [[0, 1], [2, 3]]
    assert results[:2] == ["answer 0", "answer 1"]
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results[2:])
    await batcher.aclose()


async def test_a_batch_everyone_gave_up_on_is_stopped_and_closing_cancels_the_rest() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher: Batcher[int] = Batcher(recorder, asyncio.Lock(), max_batch=2)
    running = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
    await held_until_started(recorder)
    waiting = asyncio.create_task(batcher.submit(9))
    await asyncio.sleep(0)
    running[0].cancel()
    await asyncio.wait({running[0]})
    assert not recorder.stopped  # one caller still wants the batch
    running[1].cancel()
    await asyncio.wait({running[1]})
    await asyncio.to_thread(recorder.started.wait, 10)  # the next batch began: [9]
    assert recorder.stopped == [True]
    await batcher.aclose()  # stops the running batch [9] and cancels its caller
    await asyncio.wait({waiting})
    assert waiting.cancelled() and recorder.stopped == [True, True]
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(recorder, asyncio.Lock(), max_batch=0)
