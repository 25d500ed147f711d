"""The shared recognition worker: one thread, a bounded queue, partials only when idle,
failures and timeouts delivered to the request, nothing left behind; and with the real
embedded faster-whisper model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from lavia_live.config.settings import ListeningSettings
from lavia_live.errors import SpeechError
from lavia_live.server.recognizer import RecognitionWorker, RecognizerBusy, whisper_transcriber
from lavia_live.speech.asr import Segment, Transcript, decode_audio_file
from tests.lavia_live.server.conftest import wait_for


class Gate:
    """A transcriber that blocks until released and answers with the audio's length; it
    raises for audio of length 13 and remembers which thread ran it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, audio: npt.NDArray[np.float32]) -> Transcript:
        self.threads.add(threading.current_thread().name)
        self.calls.append(audio.shape[0])
        if not self.release.wait(30):
            raise AssertionError("never released")
        if audio.shape[0] == 13:
            raise RuntimeError("the model fell over")
        text = f"n{audio.shape[0]}"
        return Transcript((Segment(0.0, 1.0, text),), "en", audio.shape[0] / 16000)


def audio(n: int) -> npt.NDArray[np.float32]:
    return np.zeros(n, dtype=np.float32)


async def test_bounded_queue_partials_when_idle_and_order() -> None:
    gate = Gate()
    worker = RecognitionWorker(gate, queue_size=2)
    await worker.start()
    try:
        first = worker.submit("a", audio(1))
        assert first is not None
        await wait_for(lambda: gate.calls == [1], 10, "the first request running")
        assert worker.busy and worker.waiting == 0
        assert worker.submit("b", audio(2), partial=True) is None  # busy: skipped
        second = worker.submit("b", audio(2))
        third = worker.submit("c", audio(3))
        with pytest.raises(RecognizerBusy, match="2 utterances waiting"):
            worker.submit("d", audio(4))
        assert third is not None
        third.cancel()  # given up (an early final the person spoke over): no place held
        third = worker.submit("c", audio(3))
        gate.release.set()
        results = await asyncio.wait_for(asyncio.gather(first, second, third), 30)
        assert [r.text for r in results] == ["n1", "n2", "n3"]  # first in, first out
        assert gate.threads == {"lavia-asr_0"}  # one thread for everyone
        # Idle again: a partial is taken.
        partial = worker.submit("a", audio(5), partial=True)
        assert partial is not None and (await asyncio.wait_for(partial, 10)).text == "n5"
    finally:
        await worker.aclose()
    assert not any(t.name.startswith("lavia-asr") for t in threading.enumerate())


async def test_a_final_replaces_its_sessions_waiting_partial_and_drop_cancels() -> None:
    gate = Gate()
    gate.release.set()
    worker = RecognitionWorker(gate, queue_size=4)
    await worker.start()
    try:
        partial = worker.submit("a", audio(1), partial=True)  # idle: taken...
        final = worker.submit("a", audio(2))  # ...and replaced before the worker ran it
        assert partial is not None and partial.cancelled()
        assert final is not None and (await asyncio.wait_for(final, 10)).text == "n2"
        assert gate.calls == [2]
        gate.release.clear()
        running = worker.submit("a", audio(3))
        await wait_for(lambda: gate.calls == [2, 3], 10)
        b_final = worker.submit("b", audio(4))
        c_final = worker.submit("c", audio(5))
        worker.drop("b")  # session b closed
        gate.release.set()
        assert running is not None and b_final is not None and c_final is not None
        assert (await asyncio.wait_for(c_final, 10)).text == "n5"
        assert b_final.cancelled() and gate.calls == [2, 3, 5]
        assert (await asyncio.wait_for(running, 10)).text == "n3"
    finally:
        await worker.aclose()


async def test_a_recogniser_that_raises_or_hangs_fails_its_request_only() -> None:
    gate = Gate()
    gate.release.set()
    worker = RecognitionWorker(gate, timeout_s=0.5)
    await worker.start()
    try:
        failing = worker.submit("a", audio(13))
        assert failing is not None
        with pytest.raises(SpeechError, match="the model fell over"):
            await asyncio.wait_for(failing, 10)
        after = worker.submit("a", audio(7))
        assert after is not None and (await asyncio.wait_for(after, 10)).text == "n7"
        gate.release.clear()  # hangs now
        hanging = worker.submit("a", audio(8))
        assert hanging is not None
        with pytest.raises(TimeoutError, match=r"took over 0\.5 s"):
            await asyncio.wait_for(hanging, 10)
        gate.release.set()
        later = worker.submit("a", audio(9))
        assert later is not None and (await asyncio.wait_for(later, 10)).text == "n9"
    finally:
        await worker.aclose()


async def test_not_started_refuses_and_closing_cancels_what_waits() -> None:
    gate = Gate()
    worker = RecognitionWorker(gate)
    with pytest.raises(SpeechError, match="not running"):
        worker.submit("a", audio(1))
    await worker.start()
    running = worker.submit("a", audio(1))
    await wait_for(lambda: gate.calls == [1], 10)
    waiting = worker.submit("a", audio(2))
    closing = asyncio.create_task(worker.aclose())
    await wait_for(lambda: waiting is not None and waiting.cancelled(), 10, "cancelled")
    gate.release.set()
    await asyncio.wait_for(closing, 30)
    assert running is not None and running.cancelled()


async def test_the_embedded_model_behind_the_worker(bundled_data: Path) -> None:
    transcribe, load = whisper_transcriber(ListeningSettings())
    worker = RecognitionWorker(transcribe, load=load)
    await worker.start()
    try:
        jfk = decode_audio_file(bundled_data / "jfk.flac")
        futures = [worker.submit(key, jfk) for key in ("a", "b")]
        results = await asyncio.wait_for(asyncio.gather(*futures), 120)  # type: ignore[arg-type]
        assert results[0].text == results[1].text
        assert "ask not what your country can do for you" in results[0].text
    finally:
        await worker.aclose()
    with pytest.raises(SpeechError, match="does not exist"):
        _, bad = whisper_transcriber(ListeningSettings(model="/nowhere/model"))
        bad()
