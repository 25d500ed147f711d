"""The streaming Silero VAD and the utterance segmenter on real speech (JFK), silence, noise,
clipping, a monologue far longer than an utterance, and audio at odd rates and layouts."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from faster_whisper.vad import get_vad_model

from lavia_live.speech.asr import SAMPLE_RATE, MonoResampler, decode_audio_file
from lavia_live.speech.vad import (
    WINDOW,
    SegmenterOptions,
    SegmentEvent,
    SileroStream,
    SpeechEnded,
    SpeechStarted,
    UtteranceSegmenter,
)

Float32 = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def jfk(bundled_data: Path) -> Float32:
    return decode_audio_file(bundled_data / "jfk.flac")


def feed(segmenter: UtteranceSegmenter, audio: Float32, chunk: int = 320) -> list[SegmentEvent]:
    events: list[SegmentEvent] = []
    for i in range(0, audio.shape[0], chunk):
        events += segmenter.feed(audio[i : i + chunk])
    return events + segmenter.flush()


def ended(events: list[SegmentEvent]) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


@pytest.mark.parametrize("chunk", [160, 333, 512, 4000])
def test_streamed_probabilities_equal_the_whole_recording(jfk: Float32, chunk: int) -> None:
    audio = jfk[: jfk.shape[0] // WINDOW * WINDOW]
    whole = get_vad_model()(audio).reshape(-1)
    stream = SileroStream()
    probs = np.concatenate(
        [stream.feed(audio[i : i + chunk])[1] for i in range(0, len(audio), chunk)]
    )
    assert probs.shape == whole.shape
    np.testing.assert_allclose(probs, whole, atol=1e-5)
    assert whole.max() > 0.9 and whole.min() < 0.1  # it does tell speech from pauses


def test_jfk_phrases_become_utterances_in_order(jfk: Float32) -> None:
    events = feed(UtteranceSegmenter(SegmenterOptions(min_silence_ms=500)), jfk)
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, SpeechEnded] * (len(events) // 2), kinds
    utterances = ended(events)
    assert len(utterances) == 4, utterances  # four phrases with ~0.7 s between them
    assert [u.index for u in utterances] == [1, 2, 3, 4]
    assert all(u.audio is not None for u in utterances)
    assert [u.reason for u in utterances] == ["silence"] * 3 + ["ended"]
    for earlier, later in itertools.pairwise(utterances):
        assert earlier.end_s <= later.start_s
    # With a longer end-of-question silence the sentence after the first pause is one.
    longer = ended(feed(UtteranceSegmenter(SegmenterOptions(min_silence_ms=1200)), jfk))
    assert len(longer) == 1 and longer[0].duration_s == pytest.approx(10.7, abs=0.5)


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(10 * SAMPLE_RATE, dtype=np.float32),
        np.random.default_rng(1).normal(0, 0.01, 10 * SAMPLE_RATE).astype(np.float32),
        np.random.default_rng(2).normal(0, 0.5, 10 * SAMPLE_RATE).clip(-1, 1).astype(np.float32),
        (0.9 * np.sin(np.arange(10 * SAMPLE_RATE) * 2 * np.pi * 1000 / SAMPLE_RATE)).astype(
            np.float32
        ),
    ],
    ids=["silence", "quiet-noise", "loud-noise", "tone"],
)
def test_silence_and_noise_give_no_utterance(audio: Float32) -> None:
    assert feed(UtteranceSegmenter(), audio) == []


def test_clipped_speech_is_still_speech(jfk: Float32) -> None:
    clipped = np.clip(jfk * 20, -1, 1).astype(np.float32)
    assert len(ended(feed(UtteranceSegmenter(), clipped))) >= 3


def test_a_monologue_is_cut_at_the_longest_utterance_in_fixed_memory(jfk: Float32) -> None:
    # Two minutes of talk without a pause long enough to end a question.
    monologue = np.concatenate([jfk] * 11)
    options = SegmenterOptions(min_silence_ms=3000, max_utterance_s=4.0)
    segmenter = UtteranceSegmenter(options)
    buffer_bytes = segmenter._buffer.nbytes
    events = feed(segmenter, monologue, chunk=1600)
    utterances = ended(events)
    assert len(utterances) >= 120 / 4 - 2, len(utterances)
    assert all(u.duration_s <= 4.0 for u in utterances)
    assert sum(u.audio is None for u in utterances) <= 1  # a last scrap under min_speech_ms
    assert sum(u.reason == "max_length" for u in utterances) >= len(utterances) - 2
    # Cut mid-speech, an utterance goes straight on into the next: no speech is lost.
    cuts = 0
    for earlier, later in itertools.pairwise(utterances):
        if earlier.reason == "max_length" and earlier.duration_s == 4.0:
            cuts += 1
            assert later.start_s == pytest.approx(earlier.end_s, abs=0.001)
    assert cuts >= 10
    assert segmenter._buffer.nbytes == buffer_bytes == 4 * SAMPLE_RATE * 4


def test_short_clicks_are_dropped_and_a_stream_that_stops_ends_its_utterance(
    jfk: Float32,
) -> None:
    segmenter = UtteranceSegmenter(SegmenterOptions(min_speech_ms=1000))
    click = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), jfk[5000:9000]])  # 0.25 s
    dropped = ended(feed(segmenter, click))
    assert all(u.audio is None for u in dropped)
    # Speech cut off mid-word (the microphone went away): what was heard is kept.
    segmenter = UtteranceSegmenter()
    events = segmenter.feed(jfk[: int(1.6 * SAMPLE_RATE)])
    assert [type(e) for e in events] == [SpeechStarted] and segmenter.active
    assert segmenter.buffered_s > 1.0
    (last,) = segmenter.flush()
    assert isinstance(last, SpeechEnded) and last.reason == "ended"
    assert last.audio is not None and last.duration_s > 1.0
    # A reset (audio that must not count) ends it without audio.
    segmenter.feed(jfk[: int(1.6 * SAMPLE_RATE)])
    (gone,) = segmenter.reset()
    assert isinstance(gone, SpeechEnded) and gone.audio is None and not segmenter.active


def _frames(audio: Float32, rate: int, layout: str, fmt: str, ms: int) -> list[av.AudioFrame]:
    """``audio`` (16 kHz) as frames of another rate, layout and sample format."""
    source = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
    source.sample_rate = SAMPLE_RATE
    resampler = av.AudioResampler(
        format=fmt, layout=layout, rate=rate, frame_size=rate * ms // 1000
    )
    return [*resampler.resample(source), *resampler.resample(None)]


@pytest.mark.parametrize(
    ("rate", "layout", "fmt"),
    [
        (8000, "mono", "s16"),
        (44100, "stereo", "fltp"),
        (48000, "5.1", "s16"),
        (22050, "mono", "dbl"),
    ],
)
def test_odd_rates_and_layouts_segment_as_16_khz_does(
    jfk: Float32, rate: int, layout: str, fmt: str
) -> None:
    reference = ended(feed(UtteranceSegmenter(), jfk))
    resampler = MonoResampler()
    segmenter = UtteranceSegmenter()
    events: list[SegmentEvent] = []
    samples = 0
    for frame in _frames(jfk, rate, layout, fmt, ms=20):
        chunk = resampler.resample(frame)
        samples += chunk.shape[0]
        events += segmenter.feed(chunk)
    tail = resampler.flush()
    samples += tail.shape[0]
    events += segmenter.feed(tail) + segmenter.flush()
    assert samples == pytest.approx(jfk.shape[0], abs=SAMPLE_RATE // 50)
    got = ended(events)
    assert len(got) == len(reference)
    for a, b in zip(got, reference, strict=True):
        assert a.start_s == pytest.approx(b.start_s, abs=0.1)
        assert a.end_s == pytest.approx(b.end_s, abs=0.1)


def test_a_stream_that_changes_format_midway_is_resampled_from_then_on(jfk: Float32) -> None:
    half = jfk.shape[0] // 2
    frames = _frames(jfk[:half], 48000, "stereo", "s16", 20) + _frames(
        jfk[half:], 8000, "mono", "s16", 20
    )
    resampler = MonoResampler()
    out = np.concatenate([resampler.resample(f) for f in frames] + [resampler.flush()])
    assert out.dtype == np.float32 and out.shape[0] == pytest.approx(jfk.shape[0], abs=800)
    assert resampler.flush().shape[0] == 0


@pytest.mark.parametrize(("min_silence_ms", "phrases"), [(500, 3), (1200, 0)])
def test_ending_gives_the_audio_the_utterance_ends_with_unless_speech_resumes(
    jfk: Float32, min_silence_ms: int, phrases: int
) -> None:
    options = SegmenterOptions(min_silence_ms=min_silence_ms, pad_ms=200, early_ms=100)
    segmenter = UtteranceSegmenter(options)
    endings: dict[int, dict[int, Float32]] = {}  # utterance -> spoken samples -> audio
    first: dict[tuple[int, int], int] = {}  # (utterance, spoken) -> samples when first given
    events: list[SegmentEvent] = []
    for i in range(0, jfk.shape[0], WINDOW):
        events += segmenter.feed(jfk[i : i + WINDOW])
        ending = segmenter.ending()
        if ending is not None:
            endings.setdefault(segmenter.utterances, {})[ending[0]] = ending[1]
            first.setdefault((segmenter.utterances, ending[0]), ending[1].shape[0])
    # Each was first given after 3 windows (96 ms, early_ms rounded down) of silence.
    assert first and all(n == spoken + 3 * WINDOW for (_, spoken), n in first.items())
    events += segmenter.flush()
    assert segmenter.ending() is None
    utterances = ended(events)
    silent_ends = [u for u in utterances if u.reason == "silence"]
    assert len(silent_ends) == phrases
    for u in silent_ends:  # each end was known once 200 ms of its silence had passed
        assert u.audio is not None
        np.testing.assert_array_equal(endings[u.index][u.spoken], u.audio)
    if min_silence_ms > 700:  # one utterance over JFK's ~0.7 s pauses: at each of them
        (u,) = utterances  # an ending was given, and the speech went on
        assert len([s for s in endings[u.index] if s != u.spoken]) >= 3
        assert u.audio is not None  # the recording ends after 200 ms of silence: known too
        np.testing.assert_array_equal(endings[u.index][u.spoken], u.audio)
