"""Voice questions over real WebRTC on loopback: an aiortc client sends its "microphone" (an
eSpeak-spoken question, the JFK recording) as a 48 kHz audio track beside the demo video;
the server's VAD cuts the utterance, the shared faster-whisper worker transcribes it, the
client receives partial and final ``transcript`` events, then the answer, and hears it.
Barge-in: speaking over a long answer stops the voice the client receives within a bound
measured from the first voiced packet it sent."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import av
import jiwer
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from lavia_live.config import Settings
from lavia_live.server.app import LiveServer
from lavia_live.server.audio import SAMPLE_RATE, SpeechTrack
from lavia_live.speech.asr import TranscriptionOptions, decode_audio_file, transcribe_pcm
from lavia_live.speech.sentences import split_sentences
from lavia_live.speech.synthesis import resample
from lavia_live.speech.tts import SpeechAudio, synthesize
from tests.lavia_live.server.conftest import NothingLeft, running_server, wait_for
from tests.lavia_live.server.test_live import Client

QUESTION = "How do I remove the drain plug from the engine oil pan?"
KEYWORDS = {"remove", "drain", "plug", "engine", "oil", "pan"}
VOICED = 500  # a received frame with a sample this loud carries the assistant's voice
BARGE_IN_BOUND_S = 0.5  # the test's bound on 2 shared cores; the target (300 ms) is the
# benchmark's (benchmarks/voice_bargein.py)
JFK = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def voice_settings(**listening: Any) -> Settings:
    return Settings.model_validate({"listening": listening})


class MicClient(Client):
    """The protocol client plus a microphone: a paced 48 kHz track that is silent until
    :meth:`say` queues speech on it (sendrecv: the assistant's voice comes back on it, and
    :attr:`heard` notes when each of its frames came out of the client's jitter buffer and
    how loud it was; :attr:`heard_packets` when the RTP packet carrying it arrived)."""

    def __init__(self, server: LiveServer, video: Path) -> None:
        super().__init__(server, video)
        self.mic = SpeechTrack()
        self.pc.addTrack(self.mic)
        self.said_from: float | None = None  # when the first sample of speech went out
        self.said_at: float | None = None  # when the last sample of speech went out
        self.heard: list[tuple[float, int]] = []  # (arrival, peak) per frame of the voice
        self.heard_packets: list[tuple[float, int]] = []  # (arrival, peak) per RTP packet
        self.recorded: list[tuple[float, npt.NDArray[np.int16]]] = []  # (arrival, 16 kHz mono)
        self.event_times: list[float] = []  # arrival of each of self.events
        self.channel.on("message", lambda m: self.event_times.append(time.monotonic()))
        self._listening: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._listening is None:
            (receiver,) = [r for r in self.pc.getReceivers() if r.track is track]
            handle, decoder = receiver._handle_rtp_packet, OpusDecoder()

            async def arrived(packet: Any, arrival_time_ms: int) -> None:
                now = time.monotonic()  # decoded on its own, before the jitter buffer
                for frame in decoder.decode(JitterFrame(packet.payload, packet.timestamp)):
                    self.heard_packets.append((now, int(np.abs(frame.to_ndarray()).max())))
                await handle(packet, arrival_time_ms)

            receiver._handle_rtp_packet = arrived  # type: ignore[method-assign]
            self._listening = asyncio.create_task(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            peak = int(np.abs(frame.to_ndarray()).max(initial=0))
            self.heard.append((now, peak))
            for out in resampler.resample(frame):
                self.recorded.append((now, np.asarray(out.to_ndarray(), np.int16).reshape(-1)))

    def recording(self, start: float, end: float) -> npt.NDArray[np.float32]:
        """The voice received between two times, float at 16 kHz."""
        kept = [chunk for at, chunk in self.recorded if start <= at <= end]
        return (
            np.concatenate(kept).astype(np.float32) / 32768.0 if kept else np.zeros(0, np.float32)
        )

    def say(self, speech: npt.NDArray[np.int16], pause_s: float = 1.0) -> None:
        """Speak ``speech`` (48 kHz) with ``pause_s`` of silence on each side."""
        self.said_from = self.said_at = None

        def started() -> None:
            self.said_from = time.monotonic()

        def done() -> None:
            self.said_at = time.monotonic()

        pause = np.zeros(int(SAMPLE_RATE * pause_s), dtype=np.int16)
        if pause_s:
            self.mic.play(pause)
        self.mic.play(speech, on_start=started, on_end=done)
        self.mic.play(pause if pause_s else np.zeros(SAMPLE_RATE, dtype=np.int16))

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    def transcripts(self, final: bool) -> list[dict[str, Any]]:
        return [e for e in self.of("transcript") if e["final"] is final]

    def timed(self, event_type: str, /, **match: Any) -> list[tuple[float, dict[str, Any]]]:
        """Events of ``event_type`` with these field values, with their arrival times."""
        return [
            (t, e)
            for t, e in zip(self.event_times, self.events, strict=True)
            if e["type"] == event_type and all(e.get(k) == v for k, v in match.items())
        ]

    def speech(self, **match: Any) -> list[tuple[float, dict[str, Any]]]:
        return self.timed("speech", **match)

    def voiced_since(self, t: float) -> int:
        return sum(1 for at, peak in self.heard if at >= t and peak >= VOICED)

    async def close(self) -> None:
        self.mic.stop()
        await super().close()
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.wait({self._listening})


def spoken(text: str) -> npt.NDArray[np.int16]:
    """``text`` in eSpeak's voice at 48 kHz."""
    return resample(synthesize(text), SAMPLE_RATE)


def from_the_first_sound(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """``pcm`` without its leading silence: its first frame is voiced."""
    loud = np.flatnonzero(np.abs(pcm) >= VOICED)
    return pcm[int(loud[0]) if loud.size else 0 :]


async def test_a_spoken_question_is_transcribed_answered_and_spoken(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    settings = voice_settings(partial_interval_s=0.5)
    async with running_server(settings) as server:
        client = MicClient(server, demo_video[0])
        try:
            await client.connect()
            hello = client.of("hello")[0]
            assert hello["listening"] == {
                "model": "embedded:tiny.en",
                "max_utterance_s": 15.0,
                "gate_while_speaking": False,
                "barge_in": True,
            }
            assert hello["speech"] is not None, "sendrecv: the voice comes back on the mic's track"
            session = server.sessions[client.sid]
            client.say(spoken(QUESTION))
            await wait_for(lambda: client.transcripts(final=True), 90, "a final transcript")
            final = client.transcripts(final=True)[0]
            assert client.said_at is not None
            heard_after_s = time.monotonic() - client.said_at
            uid = final["id"]
            assert final["ended"] == "silence" and final["audio_s"] > 2, final
            heard = set(words(final["text"]))
            assert len(heard & KEYWORDS) >= 3, final
            # Partials came first, for the same utterance, as it was being spoken.
            partials = client.transcripts(final=False)
            assert partials and {p["id"] for p in partials} == {uid}, client.of("transcript")
            assert client.events.index(partials[-1]) < client.events.index(final)
            assert max(p["audio_s"] for p in partials) < final["audio_s"]
            # The final text is asked as a question: the answer streams with the same id...
            await wait_for(
                lambda: any(a["final"] and a["id"] == uid for a in client.of("answer")),
                60,
                "the answer",
            )
            answer = [a for a in client.of("answer") if a["id"] == uid]
            assert answer[-1]["final"] and answer[-1]["text"], answer
            assert any(not a["final"] and a["delta"] for a in answer), "streamed"
            # ...and is spoken by the session's voice, piece by piece as the speaker splits it:
            # what the client hears has its words.
            pieces = split_sentences(answer[-1]["text"], first_clause=True)
            await wait_for(
                lambda: len(client.speech(id=uid, state="end")) == len(pieces),
                60,
                f"the answer spoken: {pieces}",
            )
            said = client.speech(id=uid)
            # Words of four letters or more: eSpeak's robotic voice loses some short ones.
            expected = {w for w in words(answer[-1]["text"]) if len(w) >= 4}
            assert expected, f"nothing to listen for in {answer[-1]['text']!r}"
            audio = client.recording(said[0][0], said[-1][0] + 0.5)
            options = TranscriptionOptions(beam_size=1)
            heard_answer = await asyncio.to_thread(transcribe_pcm, audio, options)
            heard_words = set(words(heard_answer.text))
            assert len(heard_words & expected) >= len(expected) / 2, (
                heard_answer.text,
                answer[-1]["text"],
            )
            assert not client.of("error"), client.of("error")
            assert session.listener is not None and session.listener.frames_received > 100
            print(
                f"\nfinal transcript {final['text']!r}: {final['latency_ms']:.0f} ms after "
                f"the end of the utterance, {heard_after_s * 1000:.0f} ms after the last "
                f"sample of speech was sent; {len(partials)} partials; answer "
                f"{answer[-1]['text']!r} heard as {heard_answer.text!r}"
            )
        finally:
            await client.close()
        await wait_for(lambda: not server.sessions, 20, "session closed")
        assert not server.recognizer or not server.recognizer.busy


async def test_jfk_sent_as_webrtc_audio_comes_back_as_its_sentence(
    demo_video: tuple[Path, dict[str, Any]], bundled_data: Path
) -> None:
    audio = decode_audio_file(bundled_data / "jfk.flac")  # 16 kHz float
    pcm16 = np.clip(audio * 32768.0, -32768, 32767).astype(np.int16)
    pcm48 = resample(SpeechAudio(pcm16, 16000), SAMPLE_RATE)
    left = NothingLeft()
    # Its pauses between phrases are up to 0.7 s: a longer end-of-question silence keeps
    # the sentence in one utterance.
    async with running_server(voice_settings(min_silence_ms=1200)) as server:
        client = MicClient(server, demo_video[0])
        try:
            await client.connect()
            client.say(pcm48)
            await wait_for(lambda: client.transcripts(final=True), 120, "a final transcript")
            finals = client.transcripts(final=True)
            text = " ".join(f["text"] for f in finals)
            wer = jiwer.wer(" ".join(words(JFK)), " ".join(words(text)))
            assert wer <= 0.10, (wer, finals)
            assert len(finals) == 1 and finals[0]["audio_s"] >= 10, finals
            print(f"\nJFK over WebRTC: WER {wer:.3f}, {finals[0]['latency_ms']:.0f} ms: {text!r}")
        finally:
            await client.close()
        await wait_for(lambda: not server.sessions, 20, "session closed")
    # Nothing the listening started is left: no task, no VAD or recognition thread.
    await left.check()


def stop_time(client: MicClient, spoke_from: float, until: float) -> float:
    """Seconds from the first voiced packet the client sent (``spoke_from``) to the last
    voiced frame of the assistant it received before ``until`` (0 when none came after)."""
    voiced = [at for at, peak in client.heard if spoke_from <= at < until and peak >= VOICED]
    return max(voiced, default=spoke_from) - spoke_from


async def barge_in(
    client: MicClient, question: npt.NDArray[np.int16], answer_id: str, heard_frames: int = 10
) -> float:
    """While the answer ``answer_id`` is being spoken with seconds of it left (and
    ``heard_frames`` voiced frames of it have arrived), speak ``question`` over it; the stop
    time (:func:`stop_time`), once the voice has been quiet for a second after the cut."""
    speaker = client.server.sessions[client.sid].speaker
    assert speaker is not None

    def speaking() -> bool:  # a sentence of this answer itself plays, seconds of it left
        started = client.speech(id=answer_id, state="start")
        return (
            bool(started)
            and speaker.playing_id == answer_id
            and speaker.track.playing_left_s > 2.0
            and client.voiced_since(started[0][0]) >= heard_frames
        )

    await wait_for(speaking, 120, f"answer {answer_id} spoken, seconds of it left")
    client.say(from_the_first_sound(question), pause_s=0)
    await wait_for(lambda: client.said_from is not None, 10, "the question sent")
    spoke_from = client.said_from
    assert spoke_from is not None
    await wait_for(lambda: client.speech(id=answer_id, interrupted=True), 10, "interrupted")
    cut_at = client.speech(id=answer_id, interrupted=True)[0][0]

    def quiet() -> bool:  # a second of silence since the cut: nothing more of it can come
        since = [peak for at, peak in client.heard if at > cut_at]
        return len(since) >= 50 and max(since[-50:]) < VOICED

    await wait_for(quiet, 10, "a second of silence after the cut")
    next_start = [t for t, _ in client.speech(state="start") if t > spoke_from]
    return stop_time(client, spoke_from, next_start[0] if next_start else time.monotonic())


async def test_speaking_over_a_long_answer_stops_it_and_the_new_question_is_answered(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    # A slow voice makes any answer long; partials off keeps recognition for the final.
    async with running_server(voice_settings(partial_interval_s=0)) as server:
        client = MicClient(server, demo_video[0])
        try:
            await client.connect()
            session = server.sessions[client.sid]
            speaker = session.speaker
            assert speaker is not None
            client.send({"type": "speech", "rate": 80})
            await wait_for(lambda: speaker.rate_wpm == 80, 10, "the slow voice")
            client.send({"type": "question", "text": "What do I do next, and why?", "id": "q1"})
            question = spoken(QUESTION)
            stopped_s = await barge_in(client, question, "q1")
            print(
                f"\nbarge-in: the voice stopped {stopped_s * 1000:.0f} ms after the first voiced packet"
            )
            assert stopped_s <= BARGE_IN_BOUND_S, f"{stopped_s * 1000:.0f} ms"
            assert speaker.interruptions == 1
            # The cut sentence ends marked; nothing more of that answer is ever spoken,
            # though its text streams on to the end.
            (cut_at, cut), *_ = client.speech(id="q1", interrupted=True)
            assert cut["state"] == "end" and cut["kind"] == "answer"
            await wait_for(lambda: client.transcripts(final=True), 90, "a final transcript")
            final = client.transcripts(final=True)[0]
            uid = final["id"]
            assert len(set(words(final["text"])) & KEYWORDS) >= 3, final
            await wait_for(
                lambda: client.speech(id=uid, state="start"), 90, "the new question's answer spoken"
            )
            assert any(a["final"] and a["id"] == "q1" for a in client.of("answer"))
            assert not [e for t, e in client.speech(id="q1") if t > cut_at], client.of("speech")
            assert not client.of("error"), client.of("error")
        finally:
            await client.close()
        await wait_for(lambda: not server.sessions, 20, "session closed")
