"""Voice questions over real WebRTC on loopback: an aiortc client sends its "microphone" (an
eSpeak-spoken question, the JFK recording) as a 48 kHz audio track beside the demo video;
the server's VAD cuts the utterance, the shared faster-whisper worker transcribes it, the
client receives partial and final ``transcript`` events, then the answer, and hears it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt

from lavia_live.config import Settings
from lavia_live.server.app import LiveServer
from lavia_live.server.audio import SAMPLE_RATE, SpeechTrack
from lavia_live.speech.asr import decode_audio_file
from lavia_live.speech.synthesis import resample
from lavia_live.speech.tts import SpeechAudio, synthesize
from tests.lavia_live.server.conftest import NothingLeft, running_server, wait_for
from tests.lavia_live.server.test_live import Client

QUESTION = "How do I remove the drain plug from the engine oil pan?"
KEYWORDS = {"remove", "drain", "plug", "engine", "oil", "pan"}
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
    :meth:`say` queues speech on it (sendrecv: the assistant's voice comes back on it)."""

    def __init__(self, server: LiveServer, video: Path) -> None:
        super().__init__(server, video)
        self.mic = SpeechTrack()
        self.pc.addTrack(self.mic)
        self.said_at: float | None = None  # when the last sample of speech went out

    def say(self, speech: npt.NDArray[np.int16]) -> None:
        """Speak ``speech`` (48 kHz) with a second of silence on each side."""
        self.said_at = None

        def done() -> None:
            self.said_at = time.monotonic()

        pause = np.zeros(SAMPLE_RATE, dtype=np.int16)
        self.mic.play(pause)
        self.mic.play(speech, on_end=done)
        self.mic.play(pause)

    def transcripts(self, final: bool) -> list[dict[str, Any]]:
        return [e for e in self.of("transcript") if e["final"] is final]

    async def close(self) -> None:
        self.mic.stop()
        await super().close()


def spoken(text: str) -> npt.NDArray[np.int16]:
    """``text`` in eSpeak's voice at 48 kHz."""
    return resample(synthesize(text), SAMPLE_RATE)


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
            # ...and is spoken by the session's voice.
            await wait_for(
                lambda: any(e["id"] == uid and e["state"] == "end" for e in client.of("speech")),
                60,
                "the answer spoken",
            )
            assert not client.of("error"), client.of("error")
            assert session.listener is not None and session.listener.frames_received > 100
            print(
                f"\nfinal transcript {final['text']!r}: {final['latency_ms']:.0f} ms after "
                f"the end of the utterance, {heard_after_s * 1000:.0f} ms after the last "
                f"sample of speech was sent; {len(partials)} partials"
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
