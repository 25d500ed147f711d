"""The assistant's voice over real WebRTC on loopback: an aiortc client that receives audio
asks a question while the demo video streams, records the audio that comes back, and the
embedded faster-whisper hears the words of what the ``speech`` events say was spoken."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import AudioStreamTrack, MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from lavia_live.config import Settings
from lavia_live.server.app import LiveServer
from lavia_live.speech.asr import TranscriptionOptions, transcribe_pcm
from tests.lavia_live.server.conftest import NothingLeft, running_server, wait_for
from tests.lavia_live.server.test_live import Client
from tests.openai_server import OpenAIServer

ROBUST = {"oil", "engine", "plug", "pan", "drain", "cap", "filler", "ratchet", "dipstick", "pour"}
"""Words tiny.en hears reliably in eSpeak's voice (DESIGN.md)."""


class VoiceClient(Client):
    """The protocol client plus a recvonly audio transceiver whose audio it records (16 kHz)."""

    def __init__(self, server: LiveServer, video: Path) -> None:
        super().__init__(server, video)
        self.pc.addTransceiver("audio", direction="recvonly")
        self.chunks: list[npt.NDArray[np.int16]] = []
        self.audio_frames = 0
        self._recorder: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._recorder is None:
            self._recorder = asyncio.create_task(self._record(track))

    async def _record(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), 10)
            except (TimeoutError, MediaStreamError):
                return
            self.audio_frames += 1
            for out in resampler.resample(frame):
                self.chunks.append(np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1))

    def recording(self, max_pause_s: float = 0.4) -> npt.NDArray[np.float32]:
        """What was received, float at 16 kHz, with every silence cut to ``max_pause_s``
        (the track is silent between sentences: this keeps recognition short)."""
        kept: list[npt.NDArray[np.int16]] = []
        silent = 0.0
        for chunk in self.chunks:
            quiet = int(np.abs(chunk).max(initial=0)) < 64
            silent = silent + chunk.shape[0] / 16000 if quiet else 0.0
            if silent <= max_pause_s:
                kept.append(chunk)
        return np.concatenate(kept).astype(np.float32) / 32768.0

    def spoken(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.of("speech") if all(e.get(k) == v for k, v in match.items())]

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    async def close(self) -> None:
        await super().close()
        if self._recorder is not None:
            self._recorder.cancel()
            await asyncio.wait({self._recorder})


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


async def heard_in(client: VoiceClient) -> set[str]:
    # Greedy decoding: a beam on a loaded machine can take half a minute on robotic speech.
    options = TranscriptionOptions(beam_size=1)
    transcript = await asyncio.to_thread(transcribe_pcm, client.recording(), options)
    return words(transcript.text)


async def check_spoken_round_trip(server: LiveServer, video: Path, engine: str) -> None:
    client = VoiceClient(server, video)
    try:
        await client.connect()
        session = server.sessions[client.sid]
        speech = client.of("hello")[0]["speech"]
        assert speech["engine"] == engine and speech["muted"] is False
        assert speech["voice"] in {v["id"] for v in speech["voices"]}
        # The tracker's first announcement is spoken...
        await wait_for(lambda: client.spoken(state="end", kind="guidance"), 90, "guidance spoken")
        guidance = client.of("guidance")
        said = words(" ".join(e["text"] for e in client.spoken(state="end", kind="guidance")))
        assert any(
            words(g["next_step"]) <= said or words(g["current_step"]) <= said for g in guidance
        ), (said, guidance)
        # ...and so is the answer to a typed question, sentence by sentence.
        client.send({"type": "question", "text": "What do I do next?", "id": "q1"})
        await wait_for(
            lambda: any(a["final"] for a in client.of("answer")), 60, "the answer is complete"
        )
        answer = next(a["text"] for a in client.of("answer") if a["final"])

        def answer_spoken() -> bool:
            said = " ".join(e["text"] for e in client.spoken(state="end", id="q1"))
            return re.findall(r"[A-Za-z0-9]+", said) == re.findall(r"[A-Za-z0-9]+", answer)

        try:
            await wait_for(answer_spoken, 60, "every sentence of the answer spoken")
        except TimeoutError:
            raise AssertionError(f"answer {answer!r}; speech {client.of('speech')}") from None
        starts = [e["text"] for e in client.spoken(state="start")]
        ends = [e["text"] for e in client.spoken(state="end")]
        assert starts[: len(ends)] == ends, "each sentence ends before the next one starts"
        assert not session.close_reason, (session.close_reason, client.of("error"))
        assert session.speaker is not None and session.speaker.track.speech_frames_sent > 50
    finally:
        await client.close()
    await wait_for(lambda: not server.sessions, 15, "session closed")
    # What the client heard has the words of what was said.
    expected = ROBUST & words(" ".join(ends))
    assert expected, f"nothing robust to listen for in {ends}"
    heard = await heard_in(client)
    assert len(heard & expected) >= min(2, len(expected)), (heard, ends)


async def test_guidance_and_answers_are_heard_over_webrtc(
    live_server: LiveServer, demo_video: tuple[Path, dict[str, Any]]
) -> None:
    await check_spoken_round_trip(live_server, demo_video[0], "espeak")


async def test_openai_tts_voice_over_webrtc(
    demo_video: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with OpenAIServer() as tts:
        settings = Settings.model_validate(
            {
                "speech": {
                    "engine": "openai",
                    "openai_model": "tts-1",
                    "openai_base_url": tts.base_url,
                    "openai_api_key_env": "",
                }
            }
        )
        async with running_server(settings) as server:
            await check_spoken_round_trip(server, demo_video[0], "openai:tts-1")
        assert tts.speech_requests
        assert {r.body["model"] for r in tts.speech_requests} == {"tts-1"}
        assert {r.body["response_format"] for r in tts.speech_requests} == {"pcm"}


async def test_speech_controls_and_clients_without_audio(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    left = NothingLeft()
    async with running_server(Settings()) as server:
        plain = await Client(server, demo_video[0]).connect()
        voice = await VoiceClient(server, demo_video[0]).connect()
        mic = Client(server, demo_video[0])  # sends audio, receives none
        mic.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await mic.connect()
        try:
            assert mic.of("hello")[0]["speech"] is None
            assert server.sessions[mic.sid].speaker is None
            # A client that offers no audio works as before: no voice, and says so if asked.
            assert plain.of("hello")[0]["speech"] is None
            assert server.sessions[plain.sid].speaker is None
            plain.channel.send(json.dumps({"type": "speech", "muted": True}))
            await wait_for(lambda: plain.of("error"), 20)
            assert plain.of("error")[0]["code"] == "speech_unavailable"
            # Bad speech messages are refused with a reason; the session goes on.
            for bad in ({"rate": 5}, {"voice": ""}, {"muted": "loud"}, {"volume": 3}):
                voice.send({"type": "speech", **bad})
            voice.send({"type": "speech", "voice": "klingon"})
            await wait_for(lambda: len(voice.of("error")) >= 5, 20, "an error per bad message")
            codes = [e["code"] for e in voice.of("error")]
            assert codes == ["bad_message"] * 4 + ["unknown_voice"], codes
            speaker = server.sessions[voice.sid].speaker
            assert speaker is not None
            voice.send({"type": "speech", "voice": "en-gb-x-rp", "rate": 200})
            await wait_for(lambda: speaker.voice == "en-gb-x-rp" and speaker.rate_wpm == 200, 20)
            await wait_for(lambda: voice.spoken(state="start"), 90, "speaking")
            # Muted: what plays stops, nothing more is synthesised or sent.
            voice.send({"type": "speech", "muted": True})
            await wait_for(lambda: speaker.muted and speaker.idle, 20, "muted and quiet")
            frames = speaker.track.speech_frames_sent
            events = len(voice.of("speech"))
            voice.send({"type": "question", "text": "Where does the oil go?", "id": "q2"})
            await wait_for(lambda: any(a["final"] for a in voice.of("answer")), 60, "answered")
            await wait_for(lambda: voice.audio_frames > 0, 20)
            assert speaker.idle and speaker.track.speech_frames_sent == frames
            assert len(voice.of("speech")) == events, voice.of("speech")[events:]
        finally:
            await plain.close()
            await voice.close()
            await mic.close()
        await wait_for(lambda: not server.sessions, 20, "sessions closed")
    # Nothing the voice started is left: no task, no TTS thread.
    await left.check()
