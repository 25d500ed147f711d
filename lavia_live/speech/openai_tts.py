"""OpenAI text to speech (``POST /v1/audio/speech``) through the ``openai`` SDK.

Each sentence is one request for ``pcm``: raw 16-bit little-endian mono samples at 24 kHz,
no container to decode. ``gpt-4o-mini-tts``, ``tts-1`` and ``tts-1-hd`` all answer it; the
speaking rate becomes ``speed`` (160 words per minute is 1.0). The synchronous client is used
because the live server calls synthesizers from a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import openai

from lavia_live.errors import SpeechError
from lavia_live.openai_compat import MissingAPIKey, api_key_from_env, error_message
from lavia_live.speech.tts import SpeechAudio

__all__ = ["OPENAI_PCM_RATE", "OPENAI_VOICES", "OpenAISynthesizer", "OpenAITTSOptions"]

log = logging.getLogger(__name__)

OPENAI_PCM_RATE = 24000
"""Sample rate of the API's ``pcm`` response format."""

OPENAI_VOICES: Mapping[str, str] = {
    v: v.capitalize()
    for v in ("alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer")
}
"""Voices every OpenAI TTS model speaks."""

NORMAL_WPM = 160  # the rate that is speed 1.0
MAX_INPUT_CHARS = 4096  # the API's limit per request


@dataclass(frozen=True)
class OpenAITTSOptions:
    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    base_url: str | None = None  # None: the OpenAI API
    api_key_env: str = "OPENAI_API_KEY"  # "" for a server that needs no key
    timeout_s: float = 20.0
    max_retries: int = 1


class OpenAISynthesizer:
    def __init__(self, options: OpenAITTSOptions) -> None:
        self.options = options
        self.name = f"openai:{options.model}"
        self.default_voice = options.voice
        self.voices: Mapping[str, str] = (
            dict(OPENAI_VOICES)
            if options.voice in OPENAI_VOICES
            else {options.voice: options.voice, **OPENAI_VOICES}
        )
        try:
            key = api_key_from_env(options.api_key_env, options.base_url)
        except MissingAPIKey as exc:
            raise SpeechError(f"OpenAI TTS: {exc}") from exc
        self._client = openai.OpenAI(
            api_key=key,
            base_url=options.base_url,
            timeout=options.timeout_s,
            max_retries=options.max_retries,
        )

    def synthesize(self, text: str, voice: str, rate_wpm: int) -> SpeechAudio:
        cleaned = " ".join(text.split())
        if not cleaned:
            return SpeechAudio(pcm=np.zeros(0, dtype=np.int16), sample_rate=OPENAI_PCM_RATE)
        speed = min(4.0, max(0.25, rate_wpm / NORMAL_WPM))
        try:
            response = self._client.audio.speech.create(
                model=self.options.model,
                voice=voice,
                input=cleaned[:MAX_INPUT_CHARS],
                response_format="pcm",
                speed=round(speed, 3),
            )
            data = response.read()
        except openai.APIStatusError as exc:
            msg = f"{self.name}: HTTP {exc.status_code}: {error_message(exc)}"
            raise SpeechError(msg) from exc
        except openai.APITimeoutError as exc:
            msg = f"{self.name}: no audio within {self.options.timeout_s:g} s"
            raise SpeechError(msg) from exc
        except openai.APIConnectionError as exc:
            raise SpeechError(f"{self.name}: connection error: {exc.__cause__ or exc}") from exc
        if len(data) % 2:
            raise SpeechError(f"{self.name}: pcm audio of odd length ({len(data)} bytes)")
        pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        log.debug("%s: %d chars -> %.2f s", self.name, len(cleaned), pcm.shape[0] / 24000)
        return SpeechAudio(pcm=pcm, sample_rate=OPENAI_PCM_RATE)

    def close(self) -> None:
        self._client.close()
