"""The synthesizer interface: eSpeak NG embedded, OpenAI TTS against a loopback server that
speaks the real ``/v1/audio/speech`` protocol, and resampling to WebRTC's 48 kHz."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lavia_live.config.settings import SpeechSettings
from lavia_live.errors import SpeechError
from lavia_live.speech.asr import transcribe_pcm
from lavia_live.speech.openai_tts import OPENAI_PCM_RATE, OpenAISynthesizer
from lavia_live.speech.synthesis import ESpeakSynthesizer, Synthesizer, open_synthesizer, resample
from lavia_live.speech.tts import SpeechAudio
from tests.openai_server import OpenAIServer, hang, http_error

SENTENCE = "Now remove the drain plug and drain the engine oil."
KEYWORDS = {"engine", "oil", "plug", "remove", "drain"}


def heard(audio: SpeechAudio) -> set[str]:
    pcm16k = resample(audio, 16000).astype(np.float32) / 32768.0
    text = transcribe_pcm(pcm16k).text.lower()
    return set(text.replace(",", " ").replace(".", " ").split())


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
def test_resample_keeps_the_duration(rate: int) -> None:
    seconds = 1.37
    t = np.arange(round(seconds * rate)) / rate
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out = resample(SpeechAudio(pcm=pcm, sample_rate=rate), 48000)
    assert out.dtype == np.int16 and out.ndim == 1
    assert abs(out.shape[0] - round(seconds * 48000)) <= 48  # within 1 ms
    assert 7000 < int(np.abs(out).max()) <= 8100
    assert resample(SpeechAudio(pcm=np.zeros(0, np.int16), sample_rate=rate)).shape == (0,)


def test_espeak_synthesizer_speaks_every_voice_it_offers() -> None:
    synth: Synthesizer = open_synthesizer(SpeechSettings())
    assert isinstance(synth, ESpeakSynthesizer) and synth.name == "espeak"
    assert synth.default_voice == "en-us" and "en-us" in synth.voices
    for voice in synth.voices:
        audio = synth.synthesize("Loosen the plug.", voice, 160)
        assert audio.sample_rate == 22050 and audio.duration_s > 0.5, voice
    slow = synth.synthesize(SENTENCE, "en-us", 100).duration_s
    fast = synth.synthesize(SENTENCE, "en-us", 300).duration_s
    assert fast < 0.6 * slow
    with pytest.raises(SpeechError, match="no voice"):
        synth.synthesize("hello", "xx-nope", 160)
    assert len(heard(synth.synthesize(SENTENCE, "en-us", 160)) & KEYWORDS) >= 2


async def test_openai_tts_over_the_wire_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAVIA_TEST_TTS_KEY", "sk-test")
    async with OpenAIServer() as server:
        settings = SpeechSettings(
            engine="openai",
            openai_model="tts-1",
            openai_voice="nova",
            openai_base_url=server.base_url,
            openai_api_key_env="LAVIA_TEST_TTS_KEY",
            rate_wpm=200,
        )
        synth = open_synthesizer(settings)
        assert isinstance(synth, OpenAISynthesizer) and synth.name == "openai:tts-1"
        assert synth.default_voice == "nova" and "alloy" in synth.voices
        try:
            audio = await asyncio.to_thread(synth.synthesize, SENTENCE, "nova", 200)
            (request,) = server.speech_requests
            assert request.path == "/v1/audio/speech"
            assert request.headers["Authorization"] == "Bearer sk-test"
            assert request.body == {
                "model": "tts-1",
                "voice": "nova",
                "input": SENTENCE,
                "response_format": "pcm",
                "speed": 1.25,
            }
            assert audio.sample_rate == OPENAI_PCM_RATE == 24000
            assert 1.0 < audio.duration_s < 6.0
            words = await asyncio.to_thread(heard, audio)
            assert len(words & KEYWORDS) >= 2, words
            # The server's refusals become SpeechError with the server's message.
            with pytest.raises(SpeechError, match=r"HTTP 400.*Invalid value: 'robot'"):
                await asyncio.to_thread(synth.synthesize, "Hello.", "robot", 160)
            server.script_speech(http_error(401, "Incorrect API key provided"))
            with pytest.raises(SpeechError, match="HTTP 401: Incorrect API key"):
                await asyncio.to_thread(synth.synthesize, "Hello.", "nova", 160)
            # A 500 is retried once (max_retries=1), then reported.
            server.script_speech(http_error(500), http_error(503))
            with pytest.raises(SpeechError, match="HTTP 503"):
                await asyncio.to_thread(synth.synthesize, "Hello.", "nova", 160)
            empty = await asyncio.to_thread(synth.synthesize, "  ", "nova", 160)
            assert empty.pcm.shape == (0,)
        finally:
            synth.close()


async def test_openai_tts_timeout_and_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAVIA_TEST_NO_KEY", raising=False)
    with pytest.raises(SpeechError, match="LAVIA_TEST_NO_KEY"):
        open_synthesizer(SpeechSettings(engine="openai", openai_api_key_env="LAVIA_TEST_NO_KEY"))
    async with OpenAIServer() as server:
        server.script_speech(hang(30), hang(30))
        settings = SpeechSettings(
            engine="openai",
            openai_base_url=server.base_url,
            openai_api_key_env="",
            timeout_s=0.5,
        )
        synth = open_synthesizer(settings)
        try:
            with pytest.raises(SpeechError, match=r"no audio within 0\.5 s"):
                await asyncio.to_thread(synth.synthesize, "Hello.", "alloy", 160)
        finally:
            synth.close()
