"""The speaker and its audio track, with real eSpeak NG: sentences spoken in order as an
answer streams, start/end events around their audio, mute, and 20 ms frames paced at 48 kHz."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from lavia_live.config.settings import SpeechSettings
from lavia_live.server.audio import FRAME_SAMPLES, SpeechTrack, TrackFull
from lavia_live.server.protocol import AnswerEvent, GuidanceEvent, ServerEvent, SpeechEvent
from lavia_live.server.speaker import Speaker, guidance_text
from lavia_live.speech.synthesis import ESpeakSynthesizer
from tests.lavia_live.server.conftest import wait_for


class Rig:
    """A speaker on an unpaced track whose frames a listener pulls at 4x real time."""

    def __init__(self, settings: SpeechSettings) -> None:
        self.events: list[ServerEvent] = []
        self.errors: list[tuple[str, str, str | None]] = []
        self.frames: list[av.AudioFrame] = []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="test-tts")
        self.track = SpeechTrack(paced=False)
        self.speaker = Speaker(
            "test",
            ESpeakSynthesizer(),
            self.pool,
            self.track,
            self.events.append,
            lambda code, message, qid: self.errors.append((code, message, qid)),
            settings,
        )

    def speech(self) -> list[tuple[str, str, str | None]]:
        return [(e.state, e.text, e.id) for e in self.events if isinstance(e, SpeechEvent)]

    async def listen(self) -> None:
        while True:
            self.frames.append(await self.track.recv())
            await asyncio.sleep(0.005)  # 20 ms of audio every 5 ms


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig(SpeechSettings())
    tasks = [asyncio.create_task(rig.speaker.run()), asyncio.create_task(rig.listen())]
    try:
        yield rig
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        rig.track.stop()
        rig.pool.shutdown(wait=True)


def answer(qid: str, *, delta: str | None = None, text: str | None = None) -> AnswerEvent:
    return AnswerEvent(id=qid, final=text is not None, delta=delta, text=text)


def guidance(next_step: str, warning: str | None = None) -> GuidanceEvent:
    return GuidanceEvent(
        current_step="Slide the oil pan under the engine.",
        next_step=next_step,
        warning=warning,
        current_index=0,
        next_index=1,
        done=[],
        clip_start=0.0,
        clip_end=4.0,
        frames=4,
        latency_ms=250.0,
    )


async def test_a_streamed_answer_is_spoken_sentence_by_sentence_from_its_first(rig: Rig) -> None:
    first, second = "Loosen the drain plug with the ratchet.", "Then drain the oil into the pan."
    for word in ("Loosen", " the", " drain", " plug", " with", " the", " ratchet.", " Then"):
        rig.speaker.observe(answer("q1", delta=word))
    # The first sentence plays while the answer is still streaming (no final yet).
    await wait_for(lambda: ("start", first, "q1") in rig.speech(), 20, "first sentence starts")
    for word in (" drain", " the", " oil", " into", " the", " pan."):
        rig.speaker.observe(answer("q1", delta=word))
    rig.speaker.observe(answer("q1", text=f"{first} {second}"))
    await wait_for(lambda: rig.speaker.sentences_spoken == 2, 30, "both sentences spoken")
    assert rig.speech() == [
        ("start", first, "q1"),
        ("end", first, "q1"),
        ("start", second, "q1"),
        ("end", second, "q1"),
    ]
    assert all(isinstance(e, SpeechEvent) and e.kind == "answer" for e in rig.events)
    assert not rig.errors
    await wait_for(lambda: rig.speaker.idle, 10)
    # 20 ms frames of mono s16 at 48 kHz, consecutive timestamps, speech then silence.
    frames = list(rig.frames)
    assert {(f.samples, f.sample_rate, f.format.name, f.layout.name) for f in frames} == {
        (FRAME_SAMPLES, 48000, "s16", "mono")
    }
    assert [f.pts for f in frames] == [i * FRAME_SAMPLES for i in range(len(frames))]
    assert all(f.time_base == Fraction(1, 48000) for f in frames)
    loud = [int(np.abs(f.to_ndarray()).max()) > 1000 for f in frames]
    spoken_s = sum(loud) * 0.02
    assert 2.0 < spoken_s < 8.0, spoken_s
    assert rig.track.speech_frames_sent * 0.02 >= spoken_s


async def test_guidance_is_spoken_and_a_newer_one_replaces_one_not_yet_spoken(rig: Rig) -> None:
    event = guidance("Unscrew the yellow oil filler cap.", warning="The oil pan is missing")
    assert guidance_text(event) == (
        "Warning: The oil pan is missing. Next: Unscrew the yellow oil filler cap."
    )
    rig.speaker.announce("Next: Loosen the drain plug.")
    rig.speaker.announce("Next: Drain the old oil.")  # before the first is synthesised
    rig.speaker.observe(event)
    await wait_for(lambda: rig.speaker.sentences_spoken >= 2, 30, "guidance spoken")
    await wait_for(lambda: rig.speaker.idle, 10)
    spoken = [text for state, text, _ in rig.speech() if state == "start"]
    assert len(spoken) == 2, spoken
    assert spoken[-2:] == [
        "Warning: The oil pan is missing.",
        "Next: Unscrew the yellow oil filler cap.",
    ]
    assert all(e.kind == "guidance" and e.id is None for e in rig.events)  # type: ignore[union-attr]


async def test_muted_speaks_nothing_and_mute_cuts_the_sentence_playing(rig: Rig) -> None:
    rig.speaker.configure(muted=True)
    rig.speaker.observe(guidance("Drain the old oil into the pan."))
    rig.speaker.observe(answer("q1", text="Loosen the plug. Then drain it."))
    assert rig.speaker.idle and not rig.events
    frames = len(rig.frames)
    await wait_for(lambda: len(rig.frames) > frames + 20, 10, "the track goes on (silence)")
    assert all(not f.to_ndarray().any() for f in rig.frames)
    # Unmuted, with a voice and rate of the client's choice; muting while it speaks cuts it.
    rig.speaker.configure(muted=False, voice="en-us+f3", rate_wpm=120)
    rig.speaker.observe(answer("q2", text="Loosen the drain plug slowly. Then drain the oil."))
    await wait_for(lambda: rig.track.speaking, 20, "speaking")
    rig.speaker.configure(muted=True)
    assert rig.speech() == [
        ("start", "Loosen the drain plug slowly.", "q2"),
        ("end", "Loosen the drain plug slowly.", "q2"),
    ]
    assert rig.track.pending == 0
    await wait_for(lambda: rig.speaker.idle, 10)
    silent_from = len(rig.frames)
    await wait_for(lambda: len(rig.frames) > silent_from + 20, 10)
    assert all(not f.to_ndarray().any() for f in rig.frames[silent_from + 1 :])
    assert rig.speaker.info().muted and rig.speaker.info().voice == "en-us+f3"


async def test_synthesis_errors_are_reported_and_speech_goes_on(rig: Rig) -> None:
    rig.speaker.configure(voice="no-such-voice")
    rig.speaker.observe(answer("q1", text="Loosen the plug."))
    await wait_for(lambda: rig.errors, 20, "an error")
    assert rig.errors[0][0] == "speech_error" and rig.errors[0][2] == "q1"
    rig.speaker.configure(voice="en-us")
    rig.speaker.observe(answer("q2", text="Loosen the plug."))
    await wait_for(lambda: rig.speaker.sentences_spoken == 1, 20, "spoken after the error")


async def test_track_pacing_silence_and_bounds() -> None:
    track = SpeechTrack(max_queued_s=1.0)
    try:
        started = time.monotonic()
        frames = [await track.recv() for _ in range(26)]
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 2.0, elapsed  # 25 steps of 20 ms after the first frame
        assert [f.pts for f in frames] == [i * 960 for i in range(26)]
        assert not any(f.to_ndarray().any() for f in frames)
        assert track.playing_left_s == 0.0 and not track.speaking
        marks: list[str] = []
        track.play(
            np.full(1500, 1000, np.int16),
            lambda: marks.append("start"),
            lambda: marks.append("end"),
        )
        with pytest.raises(TrackFull):
            track.play(np.zeros(48000, np.int16))
        first = (await track.recv()).to_ndarray().reshape(-1)
        assert marks == ["start"] and (first == 1000).all()
        assert track.playing_left_s == pytest.approx((1500 - 960) / 48000)
        second = (await track.recv()).to_ndarray().reshape(-1)
        assert marks == ["start", "end"] and track.playing_left_s == 0.0
        assert (second[: 1500 - 960] == 1000).all() and not second[1500 - 960 :].any()
        track.play(np.zeros(48000, np.int16))  # room again
    finally:
        track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended"


async def test_an_answer_goes_before_guidance_that_waits(rig: Rig) -> None:
    rig.speaker.announce("Warning: The oil pan is missing. Next: Slide the pan under the engine.")
    rig.speaker.observe(answer("q1", text="Put the pan under the drain plug."))
    await wait_for(lambda: rig.speaker.sentences_spoken == 3, 30, "all spoken")
    assert [text for state, text, _ in rig.speech() if state == "start"] == [
        "Put the pan under the drain plug.",
        "Warning: The oil pan is missing.",
        "Next: Slide the pan under the engine.",
    ]


async def test_barge_in_cuts_at_once_and_the_rest_of_that_answer_is_never_spoken(rig: Rig) -> None:
    first = "Loosen the drain plug slowly with the ratchet, one turn at a time."
    rig.speaker.observe(answer("q1", delta=f"{first} Then"))
    await wait_for(lambda: rig.track.speaking, 20, "speaking")
    await wait_for(lambda: rig.frames and rig.frames[-1].to_ndarray().any(), 10, "voiced")
    assert rig.speaker.playing_id == "q1" and rig.track.playing_left_s > 0
    assert rig.speaker.interrupt(), "it was speaking: the sentence is cut"
    cut_at = len(rig.frames)
    assert rig.speaker.interruptions == 1 and rig.track.pending == 0
    assert rig.speaker.playing_id is None and rig.track.playing_left_s == 0.0
    rig.speaker.hold(30)
    # The very next frame is silent: the track's buffered audio is gone.
    await wait_for(lambda: len(rig.frames) > cut_at + 25, 10, "frames after the cut")
    assert not any(f.to_ndarray().any() for f in rig.frames[cut_at:])
    # The rest of that answer streams on, and is not spoken; a new answer waits for the hold.
    rig.speaker.observe(answer("q1", delta=" drain the oil into the pan."))
    rig.speaker.observe(answer("q1", text=f"{first} Then drain the oil into the pan."))
    rig.speaker.observe(answer("q2", text="Use a fourteen millimetre socket."))
    frames = len(rig.frames)
    await wait_for(lambda: len(rig.frames) > frames + 50, 10, "a second of the track")
    assert not rig.track.speaking and rig.speaker.held
    rig.speaker.hold(None)
    await wait_for(lambda: rig.speaker.sentences_spoken == 2, 20, "the new answer spoken")
    speech = [e for e in rig.events if isinstance(e, SpeechEvent)]
    assert [(e.state, e.id, e.interrupted) for e in speech] == [
        ("start", "q1", False),
        ("end", "q1", True),
        ("start", "q2", False),
        ("end", "q2", False),
    ]
    assert speech[0].text == first
    # Nothing playing: an interruption cuts nothing (and is not counted).
    await wait_for(lambda: rig.speaker.idle, 10)
    assert not rig.speaker.interrupt() and rig.speaker.interruptions == 1
