"""Transcription stage: real faster-whisper, real PyAV, real HTTP uploads to a loopback server."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import av
import numpy as np
import pytest

from lavia_live.errors import MediaError
from lavia_live.speech.asr import SAMPLE_RATE, Segment, Transcript, decode_audio_file
from tests.openai_server import (
    Behaviour,
    OpenAIServer,
    hang,
    http_error,
    malformed_json,
    transcribed,
)
from training.data.transcribe import (
    TranscribeOptions,
    TranscriptionError,
    TranscriptionResult,
    options_fingerprint,
    transcribe_video,
    transcript_from_json,
    transcript_to_json,
)

KEY_ENV = "LAVIA_TEST_TRANSCRIBE_KEY"
JFK_SECONDS = 11.0
# A generous timeout: answers from the loopback server must never run into it, however loaded
# the machine; only the test of a hanging server shortens it.
OPENAI = TranscribeOptions(backend="openai", api_key_env=KEY_ENV, timeout_s=30.0, max_retries=2)


def make_video(path: Path, audio: Path | None, seconds: float = 3.0) -> Path:
    """A small black H.264 mp4, with ``audio``'s track (as AAC, mono 16 kHz) if given."""
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = None if audio is None else out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        black = np.zeros((48, 64, 3), dtype=np.uint8)
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None and audio is not None:
            samples = decode_audio_file(audio).reshape(1, -1)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = SAMPLE_RATE, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


@pytest.fixture(scope="module")
def jfk_video(bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "jfk.mp4", bundled_data / "jfk.flac")


@pytest.fixture(scope="module")
def silent_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "silent.mp4", None)


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as s:
        yield s


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return "sk-test"


async def transcribe(path: Path, options: TranscribeOptions) -> TranscriptionResult:
    return await asyncio.to_thread(transcribe_video, path, options)


def assert_in_time_order(transcript: Transcript) -> None:
    starts = [s.start for s in transcript.segments]
    assert starts == sorted(starts)
    assert all(s.start <= s.end for s in transcript.segments)


async def test_local_backend_transcribes_a_videos_narration(jfk_video: Path) -> None:
    result = await transcribe(jfk_video, TranscribeOptions())

    words = re.sub(r"[^a-z ]", "", result.transcript.text.lower())
    assert "ask not what your country can do for you" in words
    assert result.backend == "local:embedded:tiny.en"
    assert result.audio_seconds == pytest.approx(JFK_SECONDS, abs=0.1)
    assert result.cost_usd == 0.0
    assert result.transcript.segments and result.transcript.language == "en"
    assert_in_time_order(result.transcript)


async def test_openai_splits_an_upload_over_the_limit_and_offsets_each_chunk(
    server: OpenAIServer, jfk_video: Path, key: str
) -> None:
    server.max_upload_bytes = 16_000  # the server refuses (413) anything bigger
    options = replace(OPENAI, openai_base_url=server.base_url, max_upload_bytes=16_000)

    result = await transcribe(jfk_video, options)

    uploads = server.uploads
    assert len(uploads) >= 3
    assert all(u.accepted and 0 < u.size <= 16_000 for u in uploads)
    assert [u.filename for u in uploads] == [f"jfk.part{i}.mp3" for i in range(len(uploads))]
    for u in uploads:
        assert u.model == "whisper-1"
        assert u.fields["response_format"] == ["verbose_json"]
        assert u.fields["timestamp_granularities[]"] == ["segment"]
        assert u.headers["Authorization"] == f"Bearer {key}"
    durations = [u.duration for u in uploads]
    assert all(d is not None and d >= 1.0 for d in durations)
    assert sum(d for d in durations if d is not None) == pytest.approx(JFK_SECONDS, abs=0.01)

    # The server answers "<filename> #k" for [2k, 2k+2) s of each chunk: each segment must
    # come back offset by its chunk's start (the sum of the earlier chunks' durations).
    transcript = result.transcript
    expected: list[Segment] = []
    chunk_start = 0.0
    for u in uploads:
        assert u.duration is not None
        for k in range(int(np.ceil(u.duration / server.segment_s))):
            start = chunk_start + k * server.segment_s
            end = chunk_start + min(u.duration, (k + 1) * server.segment_s)
            expected.append(Segment(round(start, 3), round(end, 3), f"{u.filename} #{k}"))
        chunk_start += u.duration
    assert [s.text for s in transcript.segments] == [s.text for s in expected]
    for got, want in zip(transcript.segments, expected, strict=True):
        assert got.start == pytest.approx(want.start, abs=2e-3)
        assert got.end == pytest.approx(want.end, abs=2e-3)
    assert_in_time_order(transcript)
    assert transcript.language == "english"
    assert transcript.duration == pytest.approx(JFK_SECONDS, abs=0.01)
    assert result.backend == "openai:whisper-1"
    assert result.audio_seconds == pytest.approx(JFK_SECONDS, abs=0.01)
    assert result.cost_usd == pytest.approx(result.audio_seconds / 60 * 0.006)


async def test_openai_chunks_real_narration_at_quiet_moments(
    server: OpenAIServer, external_data: Path, key: str
) -> None:
    audio = external_data / "honda_oil_change.mp3"
    options = replace(OPENAI, openai_base_url=server.base_url, max_upload_bytes=200_000)

    result = await transcribe(audio, options)

    # 200 kB holds ~50 s at 32 kbps; chunks aim for 90% of that and are cut at the quietest
    # 0.1 s in their last fifth, so every chunk but the last lasts 36-45 s.
    assert len(server.uploads) == 4
    assert all(u.accepted and u.size <= 200_000 for u in server.uploads)
    durations = [u.duration or 0.0 for u in server.uploads]
    assert sum(durations) == pytest.approx(146.05, abs=0.01)
    assert all(36.0 <= d <= 45.0 for d in durations[:-1])
    # Each cut lies in a quiet moment: quieter than most of the narration around it.
    samples = decode_audio_file(audio)
    window = SAMPLE_RATE // 10
    energy = (samples[: len(samples) // window * window].reshape(-1, window) ** 2).mean(axis=1)
    for cut in np.cumsum(durations[:-1]):
        at = int(cut * 10)
        assert energy[at - 1 : at + 1].min() <= np.percentile(energy[at - 90 : at], 10)
    assert result.transcript.segments[-1].end == pytest.approx(146.05, abs=0.01)
    assert result.cost_usd == pytest.approx(146.05 / 60 * 0.006)


@pytest.mark.parametrize(
    ("failure", "min_wait_s"),
    [
        (http_error(500), 0.5 * 0.75),  # the SDK's first backoff: 0.5 s less <= 25 % jitter
        (http_error(429, retry_after=0.2), 0.2),  # what Retry-After asks instead
        (hang(3600), 0.0),
    ],
    ids=["500", "429", "timeout"],
)
async def test_openai_client_retries_transient_failures(
    server: OpenAIServer, bundled_data: Path, key: str, failure: Behaviour, min_wait_s: float
) -> None:
    segments = ((0.0, 4.1, " And so my fellow Americans,"), (4.1, 11.0, " ask not."))
    server.script_transcriptions(failure, transcribed(segments))
    # The hanging attempt ends at the client's timeout, which the answered one must beat.
    timeout_s = 1.5 if failure.kind == "hang" else OPENAI.timeout_s
    options = replace(OPENAI, openai_base_url=server.base_url, timeout_s=timeout_s)

    started = time.monotonic()
    result = await transcribe(bundled_data / "jfk.flac", options)
    elapsed = time.monotonic() - started

    first, second = server.uploads
    assert first.data == second.data
    assert min_wait_s <= second.at - first.at < elapsed
    assert result.transcript.segments == (
        Segment(0.0, 4.1, "And so my fellow Americans,"),
        Segment(4.1, 11.0, "ask not."),
    )
    assert result.cost_usd == pytest.approx(JFK_SECONDS / 60 * 0.006)


async def test_openai_gives_up_after_max_retries(
    server: OpenAIServer, bundled_data: Path, key: str
) -> None:
    server.script_transcriptions(*[http_error(502, "bad gateway", retry_after=0.01)] * 3)
    options = replace(OPENAI, openai_base_url=server.base_url, max_retries=1)

    with pytest.raises(
        TranscriptionError, match=r"^jfk\.mp3: HTTP 502: bad gateway \(after 1 retry\)$"
    ):
        await transcribe(bundled_data / "jfk.flac", options)
    assert len(server.uploads) == 2


async def test_openai_malformed_answer_is_not_retried(
    server: OpenAIServer, bundled_data: Path, key: str
) -> None:
    server.script_transcriptions(malformed_json())
    options = replace(OPENAI, openai_base_url=server.base_url)

    with pytest.raises(
        TranscriptionError, match=r"^jfk\.mp3: malformed response: body is not JSON$"
    ):
        await transcribe(bundled_data / "jfk.flac", options)
    assert len(server.uploads) == 1


async def test_fake_server_reads_an_upload_however_it_arrives(server: OpenAIServer) -> None:
    """aiohttp's multipart reader calls the deprecated ``unread_data()`` (an error here, where
    warnings are errors) when a read shorter than the boundary is followed by one longer than
    its 256 KiB chunk: the fake server must answer as scripted whatever pieces the body comes
    in. The body is sent in exactly those pieces, each read before the next is sent."""
    server.script_transcriptions(http_error(502, "bad gateway"))
    data = bytes(range(256)) * 2400  # 600 kB, CR, LF and "-" included
    boundary = "lavia-test-boundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="narration.mp3"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    cuts = [len(head) + 10, len(head) + 13]  # then a sliver of 3 bytes, then the 600 kB rest
    request = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    answer = asyncio.ensure_future(reader.read())
    try:
        writer.write(request)
        start = 0
        for cut in cuts:
            writer.write(body[start:cut])
            await writer.drain()
            read = asyncio.ensure_future(
                server.wait_until(lambda n=cut: server.upload_bytes_received >= n, timeout=60)
            )
            await asyncio.wait({read, answer}, return_when=asyncio.FIRST_COMPLETED)
            if answer.done():  # answered before reading it all: the asserts below say how
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)
                break
            read.result()
            start = cut
        else:
            writer.write(body[start:])
        response = await asyncio.wait_for(answer, 60)
    finally:
        answer.cancel()
        writer.close()
        await asyncio.gather(answer, writer.wait_closed(), return_exceptions=True)

    assert response.startswith(b"HTTP/1.1 502 "), response[:200]
    assert b"bad gateway" in response
    (upload,) = server.uploads
    assert upload.filename == "narration.mp3" and upload.model == "whisper-1"
    assert upload.data == data


async def test_openai_413_is_not_retried(
    server: OpenAIServer, bundled_data: Path, key: str
) -> None:
    server.max_upload_bytes = 10_000  # stricter than the client believes
    options = replace(OPENAI, openai_base_url=server.base_url, max_upload_bytes=100_000)

    with pytest.raises(TranscriptionError, match=r"HTTP 413: Maximum content size limit \(10000\)"):
        await transcribe(bundled_data / "jfk.flac", options)
    assert [u.accepted for u in server.uploads] == [False]


async def test_openai_missing_key_names_the_variable_before_any_upload(
    server: OpenAIServer, jfk_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    options = replace(OPENAI, openai_base_url=server.base_url)

    with pytest.raises(TranscriptionError, match=KEY_ENV):
        await transcribe(jfk_video, options)
    assert server.uploads == [] and server.requests == []


@pytest.mark.parametrize("backend", ["local", "openai"])
async def test_video_without_audio_track_is_a_media_error(
    server: OpenAIServer, silent_video: Path, key: str, backend: Literal["local", "openai"]
) -> None:
    options = replace(OPENAI, backend=backend, openai_base_url=server.base_url)

    with pytest.raises(MediaError, match="no audio track"):
        await transcribe(silent_video, options)
    assert server.uploads == []


def test_options_fingerprint_changes_with_what_changes_the_output() -> None:
    local = TranscribeOptions()
    assert options_fingerprint(local) == options_fingerprint(TranscribeOptions())
    assert options_fingerprint(replace(local, timeout_s=9.0)) == options_fingerprint(local)
    variants = [
        local,
        replace(local, local=replace(local.local, model="small")),
        replace(local, local=replace(local.local, language=None)),
        replace(local, local=replace(local.local, beam_size=1)),
        replace(local, backend="openai"),
        replace(local, backend="openai", openai_model="gpt-4o-transcribe"),
    ]
    prints = [options_fingerprint(v) for v in variants]
    assert len(set(prints)) == len(prints)
    assert all(re.fullmatch(r"[0-9a-f]{16}", p) for p in prints)


def test_transcript_json_round_trip() -> None:
    transcript = Transcript(
        (Segment(0.0, 1.5, "Loosen the plug."), Segment(1.5, 3.25, "Drain it.")), "en", 3.5
    )
    cached = json.loads(json.dumps(transcript_to_json(transcript)))
    assert transcript_from_json(cached) == transcript
    for bad in [[], {"language": "en", "duration": 1.0}, {**cached, "segments": [{"start": 0}]}]:
        with pytest.raises(TranscriptionError, match="malformed transcript"):
            transcript_from_json(bad)
