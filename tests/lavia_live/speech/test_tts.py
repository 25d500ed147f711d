"""eSpeak NG synthesis, its thread safety, and a round trip through the embedded ASR."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest

from lavia_live.errors import SpeechError
from lavia_live.speech.asr import SAMPLE_RATE, TranscriptionOptions, transcribe_pcm
from lavia_live.speech.tts import SpeechAudio, TTSOptions, synthesize

SHORT = "Loosen the plug."
LONG = "Loosen the oil drain plug with your ratchet, then unscrew it by hand and drain the oil."


def test_synthesize_returns_int16_speech_at_22050_hz() -> None:
    audio = synthesize(SHORT)
    assert isinstance(audio, SpeechAudio)
    assert audio.sample_rate == 22050
    assert audio.pcm.dtype == np.int16
    assert audio.pcm.ndim == 1
    assert int(np.abs(audio.pcm).max()) > 1000
    assert audio.duration_s == pytest.approx(audio.pcm.shape[0] / 22050)
    assert 0.5 < audio.duration_s < 3.0


def test_duration_grows_with_text_and_shrinks_with_rate() -> None:
    short, long = synthesize(SHORT), synthesize(LONG)
    assert long.duration_s > 2.5 * short.duration_s
    fast = synthesize(LONG, TTSOptions(words_per_minute=320))
    assert fast.duration_s < 0.75 * long.duration_s


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_gives_no_samples(text: str) -> None:
    audio = synthesize(text)
    assert audio.pcm.shape == (0,)
    assert audio.pcm.dtype == np.int16
    assert audio.duration_s == 0.0


def test_options_are_validated() -> None:
    with pytest.raises(SpeechError, match="no-such-voice"):
        synthesize("hello", TTSOptions(voice="no-such-voice"))
    assert synthesize("hello").duration_s > 0  # the engine still works afterwards
    with pytest.raises(ValueError, match="words_per_minute"):
        TTSOptions(words_per_minute=10)
    with pytest.raises(ValueError, match="voice"):
        TTSOptions(voice=" ")


def test_concurrent_calls_do_not_mix_audio() -> None:
    jobs = [
        (SHORT, TTSOptions()),
        (LONG, TTSOptions()),
        (SHORT, TTSOptions(words_per_minute=300)),
        (LONG, TTSOptions(voice="en-gb-x-rp", words_per_minute=200)),
    ]
    sequential = [synthesize(text, options).duration_s for text, options in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            results = list(pool.map(lambda job: synthesize(*job), jobs))
            for result, expected in zip(results, sequential, strict=True):
                assert result.sample_rate == 22050
                # eSpeak adds slight jitter; mixed-up buffers would be far off.
                assert result.duration_s == pytest.approx(expected, rel=0.05)


def _to_16k_float(audio: SpeechAudio) -> npt.NDArray[np.float32]:
    count = round(audio.pcm.shape[0] * SAMPLE_RATE / audio.sample_rate)
    times = np.arange(count) / SAMPLE_RATE
    source_times = np.arange(audio.pcm.shape[0]) / audio.sample_rate
    resampled = np.interp(times, source_times, audio.pcm.astype(np.float64) / 32768.0)
    return resampled.astype(np.float32)


def test_round_trip_through_whisper() -> None:
    audio = synthesize("Now remove the drain plug and drain the engine oil")
    transcript = transcribe_pcm(_to_16k_float(audio), TranscriptionOptions())
    words = set(transcript.text.lower().replace(",", " ").replace(".", " ").split())
    keywords = {"engine", "oil", "plug", "remove", "drain"}
    assert len(words & keywords) >= 2, transcript.text
