"""Clip extraction on real videos encoded here with PyAV (libx264, small and quick).

Every generated frame paints its own index as three horizontal bands of gray (base-16
digits, 16 levels apart), so decoding a JPEG back tells which source frame it came from.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from lavia_live.contract.sampling import SamplingSpec, plan_clips, sample_indices
from lavia_live.errors import MediaError
from training.data.clips import (
    ExtractedClip,
    ExtractOptions,
    VideoInfo,
    count_clips,
    iter_clips,
    probe_video,
    scaled_size,
)

W, H = 160, 120
SMALL = SamplingSpec(stride_frames=3, clip_frames=5)  # 0.1 s interval, 0.5 s clips


def counter_image(i: int, width: int = W, height: int = H) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    band = height // 3
    for d in range(3):
        digit = (i >> (4 * (2 - d))) & 0xF
        img[d * band : (d + 1) * band] = digit * 16 + 8
    img[3 * band :] = 0
    return img


def read_counter(jpeg: bytes) -> int:
    img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float64)
    band = img.shape[0] // 3
    value = 0
    for d in range(3):
        rows = img[d * band + band // 4 : (d + 1) * band - band // 4]
        level = float(rows[:, rows.shape[1] // 4 : -rows.shape[1] // 4].mean())
        value = value * 16 + round((level - 8) / 16)
    return value


def write_video(
    path: Path,
    pts: Iterable[int],
    *,
    rate: int = 30,
    time_base: Fraction | None = None,
    size: tuple[int, int] = (W, H),
    fmt: str | None = None,
    noise: bool = False,
    preset: str = "veryfast",
) -> Path:
    """Frame ``i`` carries counter ``i`` and pts ``pts[i]`` (in ``time_base``, default 1/rate)."""
    width, height = size
    rng = np.random.default_rng(7)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset}
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        for i, t in enumerate(pts):
            img = counter_image(i, width, height)
            if noise:  # big packets, so that corrupting bytes hits the picture data
                img[3 * (height // 3) - 12 :] = rng.integers(0, 256, (12, width, 3), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = t
            if time_base is not None:
                frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def cfr(path: Path, fps: int, n: int, **kw: object) -> Path:
    return write_video(path, range(n), rate=fps, **kw)  # type: ignore[arg-type]


def source_indices(clips: list[ExtractedClip]) -> list[list[int]]:
    return [[read_counter(j) for j in c.frames_jpeg] for c in clips]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


# 40 s: two full clips and a partial one of 10 samples; 7 extra frames so n is not round.
@pytest.fixture(scope="module", params=[30, 25, 60])
def cfr_video(request: pytest.FixtureRequest, videos: Path) -> tuple[Path, int, int]:
    fps: int = request.param
    n = 40 * fps + 7
    return cfr(videos / f"cfr{fps}.mp4", fps, n), fps, n


def test_cfr_kept_frames_are_the_contracts(cfr_video: tuple[Path, int, int]) -> None:
    path, fps, n = cfr_video
    options = ExtractOptions()
    clips = list(iter_clips(path, options=options))
    plans = plan_clips(fps, n, min_frames=options.min_frames)

    assert [c.index for c in clips] == [p.index for p in plans] == [0, 1, 2]
    assert source_indices(clips) == [list(p.frame_indices) for p in plans]
    for clip, plan in zip(clips, plans, strict=True):
        assert clip.timestamps == pytest.approx(plan.timestamps, abs=1e-6)
        assert clip.start_s == pytest.approx(plan.start_frame / fps, abs=1e-6)
        assert clip.end_s == pytest.approx(plan.end_frame / fps, abs=1e-6)
    every = list(iter_clips(path, options=ExtractOptions(min_frames=1)))
    assert [i for c in source_indices(every) for i in c] == sample_indices(fps, n)

    info = probe_video(path)
    assert (info.fps, info.n_frames, info.width, info.height) == (fps, n, W, H)
    assert not info.variable_frame_rate and not info.has_audio
    assert info.duration_s == pytest.approx(n / fps, abs=0.05)
    assert count_clips(info, options=options) == len(clips)


@pytest.mark.parametrize(("min_frames", "expected"), [(1, 3), (10, 3), (11, 2), (15, 2)])
def test_partial_last_clip_kept_from_min_frames(
    videos: Path, min_frames: int, expected: int
) -> None:
    path = videos / "partial.mp4"
    if not path.exists():
        cfr(path, 30, 40 * 30)  # 40 samples: 15 + 15 + 10
    options = ExtractOptions(min_frames=min_frames)
    clips = list(iter_clips(path, options=options))
    assert len(clips) == expected == count_clips(probe_video(path), options=options)
    assert [len(c.frames_jpeg) for c in clips] == [15, 15, 10][:expected]
    assert all(len(c.timestamps) == len(c.frames_jpeg) for c in clips)


def test_variable_frame_rate_one_frame_per_second(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    gaps = rng.integers(5, 150, 600)
    gaps[[100, 300]] = [2500, 1700]  # the camera stalls twice
    stamps = np.concatenate([[0], np.cumsum(gaps)])
    path = write_video(tmp_path / "vfr.mp4", stamps.tolist(), time_base=Fraction(1, 1000))
    clips = list(iter_clips(path, options=ExtractOptions(min_frames=1)))

    times = [t for c in clips for t in c.timestamps]
    sources = [i for c in source_indices(clips) for i in c]
    assert np.all(np.diff(times) > 0.5)
    duration = stamps[-1] / 1000
    assert abs(len(times) - duration) <= 0.1 * duration
    assert times == pytest.approx([stamps[i] / 1000 for i in sources], abs=1e-6)
    assert [len(c.timestamps) for c in clips[:-1]] == [15] * (len(clips) - 1)
    assert probe_video(path).variable_frame_rate


def test_stream_without_timestamps_assumes_the_nominal_rate(tmp_path: Path) -> None:
    path = cfr(tmp_path / "raw.h264", 25, 100, fmt="h264")  # no pts; FFmpeg assumes 25 fps
    clips = list(iter_clips(path, SMALL, ExtractOptions(min_frames=1)))
    assert [i for c in source_indices(clips) for i in c] == sample_indices(25, 100, SMALL)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((640, 360), 448, (448, 252)), ((360, 640), 100, (56, 100)), ((W, H), 448, (W, H))],
)
def test_resize_keeps_aspect_and_max_side(
    tmp_path: Path, size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    path = cfr(tmp_path / "size.mp4", 30, 10, size=size)
    options = ExtractOptions(max_side=max_side, min_frames=1)
    (clip,) = iter_clips(path, SMALL, options)
    with Image.open(io.BytesIO(clip.frames_jpeg[0])) as img:
        assert img.format == "JPEG"
        assert img.size == expected
    assert read_counter(clip.frames_jpeg[-1]) == 9


def test_scaled_size_even_and_bounded() -> None:
    assert scaled_size(1920, 1080, 448) == (448, 252)
    assert scaled_size(3840, 2160, 448) == (448, 252)
    assert scaled_size(1080, 1920, 448) == (252, 448)
    assert scaled_size(101, 75, 448) == (100, 76)
    assert scaled_size(5000, 10, 448) == (448, 2)
    assert all(d % 2 == 0 and d <= 447 for d in scaled_size(1001, 999, 447))


def test_4k_input(tmp_path: Path) -> None:
    path = cfr(tmp_path / "uhd.mp4", 30, 60, size=(3840, 2160), preset="ultrafast")
    clips = list(iter_clips(path, options=ExtractOptions(min_frames=1)))
    assert source_indices(clips) == [[0, 30]]
    with Image.open(io.BytesIO(clips[0].frames_jpeg[0])) as img:
        assert img.size == (448, 252)
    assert probe_video(path).width == 3840


def test_display_rotation_and_pixel_aspect_are_applied(tmp_path: Path) -> None:
    path = tmp_path / "rot.mp4"
    marked = np.zeros((H, W, 3), np.uint8)
    marked[:20, :40] = 255  # a white block in the top-left corner
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(marked, format="rgb24")))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4 + 40  # version 0 header: the 3x3 display matrix
    data[at : at + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))  # "rotate 90": shown turned a quarter clockwise
    (clip,) = iter_clips(path, SMALL, ExtractOptions(min_frames=1))
    img = np.asarray(Image.open(io.BytesIO(clip.frames_jpeg[0])).convert("L"))
    assert img.shape == (W, H)  # portrait: 160 tall, 120 wide
    assert img[2:38, -18:-2].mean() > 240  # the block is now top-right
    assert img[2:38, 2:18].mean() < 15

    wide = tmp_path / "sar.mp4"
    with av.open(str(wide), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        frame = av.VideoFrame.from_ndarray(counter_image(0), format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    (clip,) = iter_clips(wide, SMALL, ExtractOptions(min_frames=1))
    assert Image.open(io.BytesIO(clip.frames_jpeg[0])).size == (320, 120)


def test_count_clips_from_duration_when_frames_unknown() -> None:
    info = VideoInfo("x.mkv", W, H, 30.0, 40.2, None, False, variable_frame_rate=True)
    assert count_clips(info) == 3  # 41 samples: 15 + 15 + 11
    assert count_clips(info, options=ExtractOptions(min_frames=12)) == 2
    assert count_clips(VideoInfo("x", W, H, 30.0, 0.0, None, False, False)) == 0


def make_audio_only(path: Path, cover_art: bool = False) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        if cover_art:  # an "attached picture" video stream, as in tagged music files
            cover = container.add_stream("mjpeg", rate=1)
            cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
            cover.disposition = av.stream.Disposition.attached_pic
            picture = av.VideoFrame.from_ndarray(counter_image(0, 64, 48), format="rgb24")
            container.mux(cover.encode(picture.reformat(format="yuvj420p")))
            container.mux(cover.encode(None))
        for k in range(10):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_bytes(b""), p)[1], r"empty file \(0 bytes\)"),
        (lambda p: (p.mkdir(), p)[1], "not a regular file"),
        (
            lambda p: (p.write_bytes(np.random.default_rng(0).bytes(50_000)), p)[1],
            "not a readable media file",
        ),
        (lambda p: make_audio_only(p.with_suffix(".m4a")), r"no video stream \(audio only"),
        (lambda p: make_audio_only(p, cover_art=True), "audio only, 1 .*cover art ignored"),
    ],
    ids=["missing", "zero-length", "directory", "random-bytes", "audio-only", "cover-art"],
)
def test_bad_input_gets_a_specific_media_error(tmp_path: Path, make: object, reason: str) -> None:
    path = make(tmp_path / "bad.mp4")  # type: ignore[operator]
    with pytest.raises(MediaError, match=reason) as probed:
        probe_video(path)
    assert str(path) in str(probed.value)
    with pytest.raises(MediaError, match=reason):
        next(iter_clips(path))


def clips_or_media_error(path: Path) -> tuple[list[ExtractedClip], MediaError | None]:
    clips: list[ExtractedClip] = []
    try:
        for clip in iter_clips(path, SMALL, ExtractOptions(min_frames=1)):
            clips.append(clip)
    except MediaError as exc:
        return clips, exc
    return clips, None


@pytest.mark.parametrize("name", ["cut.mp4", "cut.mkv", "cut.ts"])
def test_truncated_file_yields_clips_before_the_cut_or_media_error(
    tmp_path: Path, name: str
) -> None:
    fmt = "mpegts" if name.endswith(".ts") else None
    full = write_video(tmp_path / f"full-{name}", range(150), fmt=fmt, noise=True)
    whole, error = clips_or_media_error(full)
    assert error is None and len(whole) == 10
    cut = tmp_path / name
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    clips, error = clips_or_media_error(cut)  # anything but MediaError fails the test
    if error is not None:
        assert str(cut) in str(error)
    assert len(clips) < len(whole)
    for got, want in zip(clips[:-1], whole, strict=False):
        assert got.timestamps == want.timestamps and got.frames_jpeg == want.frames_jpeg
    if name != "cut.mp4":  # the mp4 index sits at the end: nothing before the cut is readable
        assert len(clips) >= 3


def test_corrupt_middle_raises_after_the_completed_clips(tmp_path: Path) -> None:
    full = write_video(tmp_path / "full.mp4", range(150), noise=True)
    whole, _ = clips_or_media_error(full)
    data = bytearray(full.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 20_000] = np.random.default_rng(1).bytes(20_000)
    bad = tmp_path / "corrupt.mp4"  # the index still points at the damaged samples
    bad.write_bytes(bytes(data))

    clips, error = clips_or_media_error(bad)
    assert error is not None, "this FFmpeg conceals the damage instead of reporting it"
    assert str(bad) in str(error)
    assert "decoding failed at " in str(error)
    assert 0 < len(clips) < len(whole)
    assert all(len(c.frames_jpeg) == SMALL.clip_frames for c in clips)
    assert source_indices(clips) == source_indices(whole[: len(clips)])


def test_stopping_early_closes_cleanly(videos: Path) -> None:
    path = cfr(videos / "early.mp4", 30, 60)
    clips = iter_clips(path, SMALL)
    first = next(clips)
    clips.close()
    assert first.index == 0 and read_counter(first.frames_jpeg[0]) == 0
