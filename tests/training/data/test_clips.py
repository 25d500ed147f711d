"""Clip extraction on real videos encoded here with PyAV (libx264, small and quick).

Every generated frame paints its own index (:mod:`tests.videos`), so decoding a JPEG back
tells which source frame it came from.
"""

from __future__ import annotations

import io
import multiprocessing
import re
from array import array
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from lavia_live.contract.sampling import (
    SamplingSpec,
    TimestampSampler,
    plan_clips,
    sample_indices,
)
from lavia_live.errors import MediaError
from tests.videos import H, W, counter_image, read_counter, still_video, write_video
from training.data.clips import (
    DecodeStats,
    ExtractedClip,
    ExtractOptions,
    VideoInfo,
    _iter_clips,
    count_clips,
    iter_clips,
    probe_video,
)
from training.data.pictures import (
    SYNTAXES,
    Picture,
    ReorderBuffer,
    SkipPlan,
    h264_picture,
    hevc_picture,
    nal_headers,
    plan_skipping,
)

SMALL = SamplingSpec(stride_frames=3, clip_frames=5)  # 0.1 s interval, 0.5 s clips


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


def test_4k_input(tmp_path: Path) -> None:
    path = cfr(tmp_path / "uhd.mp4", 30, 31, size=(3840, 2160), preset="ultrafast")
    clips = list(iter_clips(path, options=ExtractOptions(min_frames=1)))
    assert source_indices(clips) == [[0, 30]]
    with Image.open(io.BytesIO(clips[0].frames_jpeg[0])) as img:
        assert img.size == (448, 252)
    assert probe_video(path).width == 3840


def test_display_rotation_and_pixel_aspect_are_applied(tmp_path: Path) -> None:
    marked = np.zeros((H, W, 3), np.uint8)
    marked[:20, :40] = 255  # a white block in the top-left corner
    path = still_video(tmp_path / "rot.mp4", marked, quarter_turn=True)
    (clip,) = iter_clips(path, SMALL, ExtractOptions(min_frames=1))
    img = np.asarray(Image.open(io.BytesIO(clip.frames_jpeg[0])).convert("L"))
    assert img.shape == (W, H)  # portrait: 160 tall, 120 wide
    assert img[2:38, -18:-2].mean() > 240  # the block is now top-right
    assert img[2:38, 2:18].mean() < 15

    wide = still_video(tmp_path / "sar.mp4", counter_image(0), sar=Fraction(2, 1))
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


def test_single_threaded_decoding_gives_the_same_clips(cfr_video: tuple[Path, int, int]) -> None:
    path, _, _ = cfr_video
    threaded = list(iter_clips(path))
    single = list(iter_clips(path, options=ExtractOptions(decode_threads=1)))
    assert single == threaded


@pytest.mark.parametrize(
    "bad",
    [
        {"max_side": 1},
        {"jpeg_quality": 0},
        {"min_frames": 0},
        {"decode_threads": -1},
        {"workers": -1},
    ],
)
def test_options_are_validated(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ExtractOptions(**bad)


def test_stopping_early_closes_cleanly(videos: Path) -> None:
    path = cfr(videos / "early.mp4", 30, 60)
    clips = iter_clips(path, SMALL)
    first = next(clips)
    clips.close()
    assert first.index == 0 and read_counter(first.frames_jpeg[0]) == 0


# --------------------------------------------------------------------------- skipping
# Non-reference pictures that the sampler does not keep are never sent to the decoder.
# Nothing else may change: every test compares with the decode-everything path.

X265_QUIET = "log-level=error"
B_FRAME_ENCODINGS = {
    "h264-mp4": ("mp4", "libx264", {"preset": "medium", "bf": "3"}),
    "h264-mkv": ("mkv", "libx264", {"preset": "medium", "bf": "3"}),
    "h264-mov": ("mov", "libx264", {"bf": "3"}),  # libx264's default preset (medium)
    "hevc-mp4": ("mp4", "libx265", {"x265-params": X265_QUIET}),
    # Three temporal layers: only the top layer's non-reference pictures are disposable.
    "hevc-layers-mkv": ("mkv", "libx265", {"x265-params": f"{X265_QUIET}:temporal-layers=3"}),
}


def full_and_skipping(
    path: Path, spec: SamplingSpec | None = None, options: ExtractOptions | None = None
) -> tuple[list[ExtractedClip], list[ExtractedClip], DecodeStats]:
    """The clips of the decode-everything path, those of ``iter_clips``, and its stats."""
    full_stats, stats = DecodeStats(), DecodeStats()
    full = list(_iter_clips(path, spec, options, stats=full_stats, skip_disposable=False))
    skipping = list(iter_clips(path, spec, options, stats=stats))
    assert full_stats.packets_decoded == full_stats.packets == stats.packets
    assert full_stats.frames_decoded == full_stats.packets and not full_stats.skipping
    assert stats.frames_kept == full_stats.frames_kept == sum(len(c.timestamps) for c in full)
    assert stats.clips == full_stats.clips == len(full)
    assert stats.irregular == full_stats.irregular == 0
    return full, skipping, stats


@pytest.fixture(scope="module", params=list(B_FRAME_ENCODINGS))
def b_frame_video(request: pytest.FixtureRequest, videos: Path) -> Path:
    fmt, codec, options = B_FRAME_ENCODINGS[request.param]
    path = videos / f"{request.param}.{fmt}"
    return write_video(path, range(200), codec=codec, options=options)


@pytest.mark.parametrize("spec", [SMALL, SamplingSpec(stride_frames=15, clip_frames=4)])
def test_skipping_non_reference_pictures_changes_no_frame(
    b_frame_video: Path, spec: SamplingSpec
) -> None:
    full, skipping, stats = full_and_skipping(b_frame_video, spec, ExtractOptions(min_frames=1))

    assert skipping == full  # same timestamps, same JPEG bytes, same clip spans
    assert [i for c in source_indices(full) for i in c] == sample_indices(30, 200, spec)
    assert stats.skipping and stats.why_not_skipping == ""
    assert stats.packets == 200
    assert stats.packets_decoded == stats.frames_decoded < stats.packets


def test_skipping_on_the_cfr_videos(cfr_video: tuple[Path, int, int]) -> None:
    path, _, n = cfr_video  # libx264 veryfast: B-frames
    full, skipping, stats = full_and_skipping(path)
    assert skipping == full
    assert stats.skipping and stats.packets == n
    assert stats.packets_decoded < 0.8 * n


@pytest.mark.parametrize("fmt", ["mp4", "mkv"])
def test_the_plan_keeps_exactly_the_frames_a_full_decode_keeps(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(5)
    gaps = rng.integers(5, 150, 300)  # variable frame rate, with B-frames
    gaps[[60, 200]] = [2500, 900]  # and two stalls
    stamps = np.concatenate([[0], np.cumsum(gaps)]).tolist()
    path = write_video(
        tmp_path / f"vfr.{fmt}", stamps, time_base=Fraction(1, 1000), options={"bf": "3"}
    )
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        plan, why_not = plan_skipping(path, stream, SamplingSpec())
        shown = [(f.pts, f.time_base) for f in container.decode(stream)]
    assert plan is not None and why_not == ""
    sampler = TimestampSampler(SamplingSpec())
    kept = set()
    for pts, time_base in shown:
        assert pts is not None
        if sampler.offer(pts, time_base) is not None:
            kept.add(pts)
    assert list(plan.order) == [pts for pts, _ in shown]  # the decoder's output order
    assert plan.keep == kept and len(kept) > 20

    full, skipping, stats = full_and_skipping(path, options=ExtractOptions(min_frames=1))
    assert skipping == full and stats.packets_decoded < stats.packets


@pytest.mark.parametrize(
    ("name", "options", "why"),
    [
        ("ultrafast.mp4", {"preset": "ultrafast"}, "no non-reference pictures"),
        ("annexb.ts", {"bf": "3"}, r"Annex B"),
        ("raw.h264", {"bf": "3"}, r"Annex B"),
    ],
)
def test_every_frame_is_decoded_when_nothing_can_be_skipped(
    tmp_path: Path, name: str, options: dict[str, str], why: str
) -> None:
    fmt = {"ts": "mpegts", "h264": "h264"}.get(name.rsplit(".", 1)[1])
    path = write_video(tmp_path / name, range(60), fmt=fmt, options=options)
    full, skipping, stats = full_and_skipping(path, SMALL, ExtractOptions(min_frames=1))
    assert skipping == full and len(full) >= 4
    assert not stats.skipping and stats.packets_decoded == stats.packets == 60
    assert re.search(why, stats.why_not_skipping)


def test_other_codecs_decode_every_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "mpeg4.mp4", range(60), codec="mpeg4", options={"bf": "2"})
    _, _, stats = full_and_skipping(path, SMALL, ExtractOptions(min_frames=1))
    assert not stats.skipping and stats.why_not_skipping.startswith("codec mpeg4")


def test_nal_unit_headers_say_what_is_disposable() -> None:
    def units(*nals: bytes, size: int = 4) -> memoryview:
        return memoryview(b"".join(len(n).to_bytes(size, "big") + n for n in nals))

    assert nal_headers(units(b"\x06ab", b"\x41xyz"), 4, 1) == [b"\x06", b"\x41"]
    assert nal_headers(units(b"\x01\x01x", size=2), 2, 2) == [b"\x01\x01"]
    assert nal_headers(units(b"\x41xyz")[:-1], 4, 1) is None  # truncated
    assert nal_headers(units(b""), 4, 1) is None  # an empty unit
    assert nal_headers(memoryview(b"\x00\x00"), 4, 1) is None  # not even a length

    # H.264: slice (1) or IDR (5), nal_ref_idc in bits 5-6; SEI (6) and AUD (9) are inert.
    assert h264_picture([b"\x09", b"\x06", b"\x01", b"\x01"]) == Picture(True, 0, False)
    assert h264_picture([b"\x41"]) == Picture(False, 0, False)  # referenced
    assert h264_picture([b"\x01", b"\x21"]) == Picture(False, 0, False)  # one slice is
    assert h264_picture([b"\x68", b"\x01"]) == Picture(False, 0, False)  # in-band PPS
    assert h264_picture([b"\x06", b"\x65"]) == Picture(False, 0, True)
    assert h264_picture([b"\x06"]) is None  # no slice
    assert h264_picture([b"\x81"]) is None  # forbidden_zero_bit

    # HEVC: type in bits 1-6 of the first byte, TemporalId + 1 in bits 0-2 of the second.
    def hevc(kind: int, temporal_id: int = 0) -> bytes:
        return bytes([kind << 1, temporal_id + 1])

    assert hevc_picture([hevc(35), hevc(0)]) == Picture(True, 0, False)  # AUD, TRAIL_N
    assert hevc_picture([hevc(2, 2), hevc(39, 2)]) == Picture(True, 2, False)  # TSA_N + SEI
    assert hevc_picture([hevc(1)]) == Picture(False, 0, False)  # TRAIL_R
    assert hevc_picture([hevc(34), hevc(0)]) == Picture(False, 0, False)  # in-band PPS
    assert hevc_picture([hevc(32), hevc(19)]) == Picture(False, 0, True)  # VPS, IDR_W_RADL
    assert hevc_picture([hevc(0, 1), hevc(0, 2)]) is None  # two temporal layers
    assert hevc_picture([bytes([0, 0x09])]) is None  # nuh_layer_id 1
    assert hevc_picture([bytes([0, 0])]) is None  # TemporalId + 1 == 0
    assert hevc_picture([hevc(39)]) is None  # no slice


def test_only_the_top_layers_unkept_disposable_pictures_are_skipped() -> None:
    def packet(pts: int, kind: int, temporal_id: int) -> av.Packet[Any]:
        nal = bytes([kind << 1, temporal_id + 1]) + b"slice"
        p = av.Packet(len(nal).to_bytes(4, "big") + nal)
        p.pts = pts
        return p

    plan = SkipPlan(SYNTAXES["hevc"], 4, 2, Fraction(1, 30), array("q"), frozenset({3}))
    assert plan.skippable(packet(1, 0, 2))  # TRAIL_N, top layer
    assert not plan.skippable(packet(3, 0, 2))  # ... but kept
    assert not plan.skippable(packet(2, 2, 1))  # TSA_N: a layer-2 picture may use it
    assert not plan.skippable(packet(4, 1, 2))  # TRAIL_R


def test_the_reorder_buffer_checks_presentation_order() -> None:
    def order(stamps: list[int], depth: int) -> list[int] | None:
        buffer = ReorderBuffer(depth)
        ok = all(buffer.push(t) for t in stamps) and buffer.drain()
        return list(buffer.order) if ok else None

    assert order([0, 3, 1, 2, 6, 4, 5], 2) == list(range(7))  # B-frames
    assert order([0, 4, 2, 1, 3], 2) == list(range(5))  # a B-pyramid
    assert order([0, 4, 2, 1, 3], 1) is None  # reordered deeper than the decoder does
    assert order([0, 1, 2, 3, 0, 1], 2) is None  # timestamps restart
    assert order([0, 2, 1, 2], 2) is None  # a repeated timestamp
    assert order([5, 6, 7], 0) == [5, 6, 7]


# --------------------------------------------------------------------------- ranges
# A long file is decoded in ranges that start at IDR pictures, in worker processes. The
# clips must be exactly one pass's: same frames, same bytes, same times, same spans.

RANGE_ENCODINGS = {
    "h264-b-frames": ("mp4", "libx264", {"preset": "medium", "bf": "3", "g": "40"}),
    "h264-no-b-frames": ("mp4", "libx264", {"preset": "ultrafast", "g": "40"}),
    "h264-mkv": ("mkv", "libx264", {"preset": "medium", "bf": "3", "g": "40"}),
    "hevc-mp4": ("mp4", "libx265", {"x265-params": f"{X265_QUIET}:keyint=40:open-gop=0"}),
}


@pytest.fixture
def short_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode in ranges from 100 frames on (files of a minute or more, by default)."""
    monkeypatch.setattr("training.data.ranges._RANGES_MIN_FRAMES", 100)


@pytest.mark.parametrize("encoding", list(RANGE_ENCODINGS))
def test_ranges_in_processes_give_one_pass_clips(
    videos: Path, encoding: str, short_ranges: None
) -> None:
    fmt, codec, options = RANGE_ENCODINGS[encoding]
    path = write_video(
        videos / f"ranges-{encoding}.{fmt}", range(400), codec=codec, options=options
    )
    full_stats, stats = DecodeStats(), DecodeStats()
    one_pass, ranges = ExtractOptions(min_frames=1), ExtractOptions(min_frames=1, workers=2)
    full = list(_iter_clips(path, SMALL, one_pass, stats=full_stats, skip_disposable=False))
    ranged = list(iter_clips(path, SMALL, ranges, stats=stats))

    assert ranged == full  # timestamps, JPEG bytes, spans
    assert [i for c in source_indices(full) for i in c] == sample_indices(30, 400, SMALL)
    assert stats.ranges > 2 and full_stats.ranges == 1
    assert stats.packets == full_stats.packets == 400
    assert stats.frames_kept == full_stats.frames_kept and stats.clips == len(full)
    # A range stops once its kept frames are out: a few of its last pictures stay undecoded
    # (and a few sent to the decoder are never output).
    assert stats.frames_decoded <= stats.packets_decoded < 400
    if "no-b" in encoding:
        assert stats.packets_decoded > 300 and not stats.skipping
    else:  # every range also skips its unkept non-reference pictures
        assert stats.packets_decoded < full_stats.packets_decoded - 50 and stats.skipping


def test_one_pass_for_short_files_and_for_one_worker(videos: Path) -> None:
    path = write_video(videos / "short-ranges.mp4", range(400), options={"g": "40"})
    default, single = DecodeStats(), DecodeStats()
    clips = list(iter_clips(path, SMALL, stats=default))  # under a minute
    assert default.ranges == 1
    assert list(iter_clips(path, SMALL, ExtractOptions(workers=1), stats=single)) == clips
    assert single.ranges == 1


def test_a_corrupt_range_raises_after_the_completed_clips(
    tmp_path: Path, short_ranges: None
) -> None:
    full = write_video(tmp_path / "full.mp4", range(300), noise=True, options={"g": "30"})
    whole, _ = clips_or_media_error(full)
    data = bytearray(full.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 20_000] = np.random.default_rng(1).bytes(20_000)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))

    clips: list[ExtractedClip] = []
    with pytest.raises(MediaError, match="decoding failed at ") as error:
        for clip in iter_clips(bad, SMALL, ExtractOptions(workers=2, min_frames=1)):
            clips.append(clip)
    assert str(bad) in str(error.value)
    assert 0 < len(clips) < len(whole)
    assert source_indices(clips) == source_indices(whole[: len(clips)])
    assert [c.timestamps for c in clips] == [c.timestamps for c in whole[: len(clips)]]


def test_stopping_early_with_ranges_closes_cleanly(videos: Path, short_ranges: None) -> None:
    path = write_video(videos / "early-ranges.mp4", range(400), options={"g": "40"})
    clips = iter_clips(path, SMALL, ExtractOptions(workers=2))
    first = next(clips)
    clips.close()  # shuts the worker processes down; nothing left running
    assert first.index == 0 and read_counter(first.frames_jpeg[0]) == 0
    assert not multiprocessing.active_children()


def test_a_killed_worker_loses_no_clip(
    videos: Path, short_ranges: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_video(videos / "killed-ranges.mp4", range(400), options={"g": "40"})
    one_pass = list(iter_clips(path, SMALL, ExtractOptions(workers=1, min_frames=1)))
    clips = iter_clips(path, SMALL, ExtractOptions(workers=2, min_frames=1))
    got = [next(clips)]
    for child in multiprocessing.active_children():
        child.kill()  # as the kernel's out-of-memory killer would
    got += list(clips)
    assert got == one_pass
    assert "decoding process lost" in caplog.text  # the rest was decoded in this process
