"""One session's listener on bad and odd input, with the real VAD and faster-whisper: odd
rates and layouts, a track that ends or pauses mid-utterance, silence and noise, a recogniser
that fails, audio gated while the assistant speaks, a VAD that falls behind."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from lavia_live.config.settings import ListeningSettings
from lavia_live.server import listener as listener_module
from lavia_live.server.listener import Listener
from lavia_live.server.protocol import ErrorEvent, ServerEvent, TranscriptEvent
from lavia_live.server.recognizer import RecognitionWorker, Transcribe, whisper_transcriber
from lavia_live.speech.asr import SAMPLE_RATE, Segment, Transcript, decode_audio_file
from tests.lavia_live.server.conftest import wait_for

Float32 = npt.NDArray[np.float32]


class FakeMic(MediaStreamTrack):
    """Gives ``frames`` in order, then ends (MediaStreamError) or goes quiet forever."""

    kind = "audio"

    def __init__(self, frames: list[av.AudioFrame], *, then: str = "end") -> None:
        super().__init__()
        self.frames = list(frames)
        self.then = then

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0)
        if self.frames:
            return self.frames.pop(0)
        if self.then == "end":
            raise MediaStreamError
        await asyncio.Event().wait()  # a microphone that stopped sending
        raise AssertionError("unreachable")


def frames_of(
    audio: Float32, rate: int, layout: str, fmt: str, ms: int = 500
) -> list[av.AudioFrame]:
    source = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
    source.sample_rate = SAMPLE_RATE
    resampler = av.AudioResampler(
        format=fmt, layout=layout, rate=rate, frame_size=rate * ms // 1000
    )
    return [*resampler.resample(source), *resampler.resample(None)]


@pytest.fixture(scope="module")
def jfk(bundled_data: Path) -> Float32:
    return decode_audio_file(bundled_data / "jfk.flac")


class HeldRecord:
    """What the listener did with an answer it started early; a confirmed one was asked."""

    def __init__(self, text: str, qid: str, asked: list[tuple[str, str]]) -> None:
        self.text, self.qid = text, qid
        self.outcome: str | None = None
        self._asked = asked

    def confirm(self) -> None:
        assert self.outcome is None
        self.outcome = "confirmed"
        self._asked.append((self.text, self.qid))

    def withdraw(self) -> None:
        assert self.outcome is None
        self.outcome = "withdrawn"


class Harness:
    def __init__(self, settings: ListeningSettings, worker: RecognitionWorker) -> None:
        self.events: list[ServerEvent] = []
        self.asked: list[tuple[str, str]] = []
        self.held: list[HeldRecord] = []
        self.vad = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-vad")
        self.worker = worker
        self.gated = False
        self.listener = Listener(
            "s1",
            settings,
            worker,
            self.vad,
            self.events.append,
            lambda text, qid: self.asked.append((text, qid)),
            lambda code, message, qid: self.events.append(
                ErrorEvent(code=code, message=message, id=qid)
            ),
            gated=lambda: self.gated,
            ask_held=self.ask_held if settings.answer_early else None,
        )

    def ask_held(self, text: str, qid: str) -> HeldRecord:
        self.held.append(HeldRecord(text, qid, self.asked))
        return self.held[-1]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def finals(self) -> list[TranscriptEvent]:
        return [e for e in self.of(TranscriptEvent) if e.final]


@contextlib.asynccontextmanager
async def harness(transcribe: Transcribe | None = None, **settings: Any) -> AsyncIterator[Harness]:
    """A listener of session ``s1`` with its own worker (the real embedded model unless
    ``transcribe`` is given) and VAD thread, all closed on exit."""
    listening = ListeningSettings(**settings)
    load = None
    if transcribe is None:
        transcribe, load = whisper_transcriber(listening)
    worker = RecognitionWorker(transcribe, load=load)
    await worker.start()
    h = Harness(listening, worker)
    try:
        yield h
    finally:
        h.listener.close()
        await worker.aclose()
        h.vad.shutdown(wait=True)


@pytest.mark.parametrize(
    ("rate", "layout", "fmt"), [(44100, "stereo", "fltp"), (8000, "mono", "s16")]
)
async def test_odd_audio_that_ends_mid_sentence_is_transcribed_and_asked(
    jfk: Float32, rate: int, layout: str, fmt: str
) -> None:
    async with harness(min_silence_ms=1200, partial_interval_s=0) as h:
        track = FakeMic(frames_of(jfk[: 6 * SAMPLE_RATE], rate, layout, fmt))
        await asyncio.wait_for(h.listener.run(track), 60)  # returns once the track ended
        await wait_for(h.finals, 60, "the final transcript")
        (final,) = h.finals()
        assert final.ended == "ended" and final.id == "voice-1"
        assert "fellow americans" in final.text.lower(), final
        assert h.asked == [(final.text, "voice-1")]
        assert not h.of(ErrorEvent)


async def test_silence_and_noise_give_no_transcript(jfk: Float32) -> None:
    rng = np.random.default_rng(3)
    audio = np.concatenate(
        [np.zeros(4 * SAMPLE_RATE), rng.normal(0, 0.3, 4 * SAMPLE_RATE).clip(-1, 1)]
    ).astype(np.float32)
    async with harness() as h:
        await asyncio.wait_for(
            h.listener.run(FakeMic(frames_of(audio, 48000, "stereo", "s16"))), 60
        )
        assert h.events == [] and h.asked == [] and h.worker.transcribed == 0
        assert h.listener.frames_received == 16


def failing_once() -> Transcribe:
    calls = 0

    def transcribe(audio: Float32) -> Transcript:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("out of memory")
        return Transcript((Segment(0, 1, "what comes next"),), "en", audio.shape[0] / 16000)

    return transcribe


async def test_a_failing_recogniser_reports_and_listening_goes_on(jfk: Float32) -> None:
    pause = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([jfk, pause, jfk, pause])
    async with harness(failing_once(), min_silence_ms=1200, partial_interval_s=0) as h:
        await asyncio.wait_for(h.listener.run(FakeMic(frames_of(audio, 48000, "mono", "s16"))), 60)
        await wait_for(lambda: h.finals() and h.of(ErrorEvent), 30, "an error, then a final")
        (error,) = h.of(ErrorEvent)
        assert error.code == "asr_error" and error.id == "voice-1"
        assert "out of memory" in error.message
        (final,) = h.finals()
        assert final.id == "voice-2" and final.ended == "silence"
        assert h.asked == [("what comes next", "voice-2")]


async def test_audio_is_dropped_while_the_assistant_speaks(jfk: Float32) -> None:
    frames = frames_of(jfk, 48000, "stereo", "s16")
    async with harness(gate_while_speaking=True, min_silence_ms=1200) as h:
        h.gated = True
        await asyncio.wait_for(h.listener.run(FakeMic(frames)), 60)
        assert h.events == [] and h.worker.transcribed == 0
    # Without the setting, the same audio is heard whatever the assistant does.
    async with harness(min_silence_ms=1200, partial_interval_s=0) as h:
        h.gated = True
        await asyncio.wait_for(h.listener.run(FakeMic(frames_of(jfk, 48000, "stereo", "s16"))), 60)
        await wait_for(h.finals, 60, "heard")


async def test_a_microphone_that_goes_quiet_ends_the_utterance_and_closing_cancels(
    jfk: Float32,
) -> None:
    tasks_before = len(asyncio.all_tasks())
    async with harness(partial_interval_s=0) as h:
        phrase = jfk[: SAMPLE_RATE * 5 // 2]  # "And so my fellow Americans", whole words
        track = FakeMic(frames_of(phrase, 48000, "stereo", "s16"), then="quiet")
        task = asyncio.create_task(h.listener.run(track))
        await wait_for(h.finals, 60, "the utterance ended by the pause")
        (final,) = h.finals()
        assert final.ended == "ended" and "fellow american" in final.text.lower()
        task.cancel()
        await asyncio.wait({task})
    await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before, 10, "no task left")
    assert not any(t.name.startswith(("lavia-asr", "test-vad")) for t in threading.enumerate())


async def test_a_vad_that_falls_behind_drops_the_oldest_audio(
    jfk: Float32, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_module, "MAX_BACKLOG_FRAMES", 20)
    async with harness() as h:
        blocked = threading.Event()
        h.vad.submit(blocked.wait, 30)  # the VAD thread is busy elsewhere
        frames = frames_of(np.zeros(SAMPLE_RATE * 2, np.float32), 48000, "mono", "s16", ms=20)
        task = asyncio.create_task(h.listener.run(FakeMic(frames, then="quiet")))
        try:
            await wait_for(lambda: h.listener.frames_received == 100, 10, "all frames read")
            # A frame or two went to the VAD before it fell behind; of the rest, 20 are kept.
            assert len(h.listener._backlog) == 20 and h.listener.frames_dropped >= 75
        finally:
            blocked.set()
            task.cancel()
            await asyncio.wait({task})


async def test_push_to_talk_pauses_end_nothing_and_the_release_ends_it_at_once(
    jfk: Float32, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pause in the audio must not end it here either: only the release.
    monkeypatch.setattr(listener_module, "GAP_S", 60.0)

    def transcribe(audio: Float32) -> Transcript:
        return Transcript((Segment(0, 1, "what comes next"),), "en", audio.shape[0] / 16000)

    # Speech, a pause four times the silence that ends a question, the same speech again.
    phrase = jfk[: 2 * SAMPLE_RATE]
    audio = np.concatenate([phrase, np.zeros(2 * SAMPLE_RATE, dtype=np.float32), phrase])
    async with harness(transcribe, min_silence_ms=500, partial_interval_s=0) as h:
        starts: list[str] = []
        ends: list[str] = []
        h.listener.on_speech_start = starts.append
        h.listener.on_speech_end = ends.append
        # 100 ms frames: the burst this mic sends at once stays well inside the VAD backlog,
        # however slowly the VAD thread gets going (20 ms frames overflowed it under load).
        frames = frames_of(audio, 48000, "mono", "s16", ms=100)
        h.listener.press()
        task = asyncio.create_task(h.listener.run(FakeMic(frames, then="quiet")))
        try:
            await wait_for(
                lambda: starts and h.listener.frames_received == len(frames), 20, "speaking"
            )
            await wait_for(lambda: not h.listener._backlog, 10, "all audio through the VAD")
            assert starts == ["voice-1"] and not ends and not h.finals()
            assert h.listener.frames_dropped == 0
            loop = asyncio.get_running_loop()
            released = loop.time()
            h.listener.release()
            h.listener.release()  # a repeated release changes nothing
            await wait_for(h.finals, 10, "the final transcript")
            took = loop.time() - released
            (final,) = h.finals()
            assert final.ended == "released" and final.id == "voice-1", final
            assert 5.0 < final.audio_s <= 6.0, final  # both phrases and the pause between
            assert ends == ["voice-1"] and h.asked == [("what comes next", "voice-1")]
            assert took < 1.0, f"{took:.2f} s from the release to the final transcript"
        finally:
            task.cancel()
            await asyncio.wait({task})


class QueueMic(MediaStreamTrack):
    """Gives the frames the test puts in ``queue``, when it puts them."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.AudioFrame] = asyncio.Queue()

    def say(self, audio: Float32) -> None:
        for frame in frames_of(audio, 48000, "mono", "s16", ms=20):
            self.queue.put_nowait(frame)

    async def recv(self) -> av.AudioFrame:
        return await self.queue.get()


async def test_the_final_and_its_answer_start_before_the_utterance_ends_and_are_redone_if_speech_resumes(
    jfk: Float32, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_module, "GAP_S", 60.0)  # the test's own pace pauses nothing
    heard: list[int] = []  # samples of each audio the recogniser was given, in order

    def transcribe(audio: Float32) -> Transcript:
        heard.append(audio.shape[0])
        return Transcript((Segment(0, 1, f"{audio.shape[0]} samples"),), "en", 1.0)

    phrase = jfk[: 2 * SAMPLE_RATE]
    silence = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    async with harness(
        transcribe, min_silence_ms=1000, speech_pad_ms=200, partial_interval_s=0
    ) as h:
        ends: list[str] = []
        h.listener.on_speech_end = ends.append
        mic = QueueMic()
        task = asyncio.create_task(h.listener.run(mic))
        try:
            # Speech, then half the silence that ends it: the final is asked for already.
            mic.say(np.concatenate([phrase, silence]))
            await wait_for(lambda: heard, 20, "recognition before the end")
            assert not ends and not h.finals()
            early = heard[-1]
            # The person goes on: the utterance continues, and what was asked early is void.
            mic.say(np.concatenate([phrase, silence]))
            await wait_for(lambda: len(h.held) == 2, 20, "the answer started early again")
            assert not h.finals()
            mic.say(np.concatenate([silence, silence]))
            await wait_for(h.finals, 20, "the final transcript")
            (final,) = h.finals()
            assert ends == ["voice-1"] and final.ended == "silence"
            whole = round(final.audio_s * SAMPLE_RATE)
            # The end was recognised once, before the utterance ended, and nothing was asked
            # after it: the last audio the recogniser got is the utterance's speech and the
            # silence heard by then, from early_final_ms (64) up to speech_pad_ms (200) of it.
            last = heard[-1]
            assert early < last <= whole and whole - last <= (200 - 64) * SAMPLE_RATE // 1000
            assert final.text == f"{last} samples" and heard.count(last) == 1
            assert final.latency_ms is not None and final.latency_ms < 200
            # Each early transcript started an answer, held back: the first was withdrawn when
            # the person went on, the second confirmed by the end; nothing asked twice.
            outcomes = [(held.text, held.outcome) for held in h.held]
            assert outcomes == [(f"{early} samples", "withdrawn"), (final.text, "confirmed")]
            assert h.asked == [(final.text, final.id)]
        finally:
            task.cancel()
            await asyncio.wait({task})
