"""The frame format: a decoded frame becomes the same model image on both sides."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from lavia_live.contract.frames import FrameFormat, encode_frame, scaled_size
from lavia_live.contract.sampling import SamplingSpec
from tests.videos import H, W, counter_image, still_video, write_video
from training.data.clips import ExtractOptions, iter_clips


def frame_of(width: int, height: int, seed: int = 0) -> av.VideoFrame:
    """A live-like frame (YUV 4:2:0, as aiortc delivers them) of textured content."""
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")


def opened(jpeg: bytes) -> JpegImagePlugin.JpegImageFile:
    image = Image.open(io.BytesIO(jpeg))
    assert isinstance(image, JpegImagePlugin.JpegImageFile)
    return image


def decoded(path: Path) -> tuple[list[av.VideoFrame], Fraction | None]:
    """Every frame of ``path``'s video, and its sample aspect ratio."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return frames, stream.codec_context.sample_aspect_ratio


def test_scaled_size_even_and_bounded() -> None:
    assert scaled_size(1920, 1080, 448) == (448, 252)
    assert scaled_size(3840, 2160, 448) == (448, 252)
    assert scaled_size(1080, 1920, 448) == (252, 448)
    assert scaled_size(101, 75, 448) == (100, 76)
    assert scaled_size(5000, 10, 448) == (448, 2)
    assert all(d % 2 == 0 and d <= 447 for d in scaled_size(1001, 999, 447))


@pytest.mark.parametrize("bad", [{"max_side": 1}, {"jpeg_quality": 0}, {"jpeg_quality": 101}])
def test_frame_format_is_validated(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        FrameFormat(**bad)


def test_extract_options_give_their_frame_format() -> None:
    assert ExtractOptions().frame_format == FrameFormat()
    options = ExtractOptions(max_side=160, jpeg_quality=75)
    assert options.frame_format == FrameFormat(max_side=160, jpeg_quality=75)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((640, 360), 448, (448, 252)),
        ((360, 640), 100, (56, 100)),
        ((W, H), 448, (W, H)),  # never enlarged
        ((1000, 562), 448, (448, 252)),
        ((642, 98), 447, (446, 68)),  # an odd max_side: the even size below it
    ],
)
def test_output_keeps_aspect_with_even_sides_at_most_max_side(
    size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    jpeg = encode_frame(frame_of(*size), FrameFormat(max_side=max_side))
    width, height = opened(jpeg).size
    assert (width, height) == expected
    assert width % 2 == 0 and height % 2 == 0 and max(width, height) <= max_side
    assert width / height == pytest.approx(size[0] / size[1], rel=0.05)


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    marked = np.zeros((H, W, 3), np.uint8)
    marked[:20, :40] = 255  # a white block in the top-left corner
    (frame,), sar = decoded(still_video(tmp_path / "rot.mp4", marked, quarter_turn=True))
    assert (frame.width, frame.height) == (W, H) and frame.rotation % 360 != 0

    img = np.asarray(opened(encode_frame(frame, FrameFormat(), sar)).convert("L"))
    assert img.shape == (W, H)  # shown turned a quarter clockwise: portrait
    assert img[2:38, -18:-2].mean() > 240  # the block is now top-right
    assert img[2:38, 2:18].mean() < 15


@pytest.mark.parametrize(
    ("sar", "expected"),
    [
        (None, (W, H)),
        (Fraction(0, 1), (W, H)),  # unknown: square pixels
        (Fraction(2, 1), (2 * W, H)),
        (Fraction(1, 2), (W // 2, H)),
        (Fraction(4, 1), (448, 84)),  # stretched, then scaled down to max_side
    ],
)
def test_sample_aspect_ratio_stretches_the_width(
    sar: Fraction | None, expected: tuple[int, int]
) -> None:
    assert opened(encode_frame(frame_of(W, H), FrameFormat(), sar)).size == expected


def test_jpeg_quality_is_honoured() -> None:
    def tables(quality: int) -> dict[int, list[int]]:
        """The quantization tables Pillow writes at ``quality``."""
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buffer, format="JPEG", quality=quality)
        return dict(opened(buffer.getvalue()).quantization)

    frame = frame_of(320, 240)
    low, high = (encode_frame(frame, FrameFormat(jpeg_quality=q)) for q in (30, 95))
    assert dict(opened(low).quantization) == tables(30)
    assert dict(opened(high).quantization) == tables(95) != tables(30)
    assert len(high) > 2 * len(low)
    assert encode_frame(frame, FrameFormat()) == encode_frame(frame, FrameFormat(jpeg_quality=90))


def test_encoding_in_worker_threads_gives_the_same_bytes() -> None:
    """Each frame several times at once: a swscale context shared between threads (as the
    one ``VideoFrame.reformat`` caches on the frame) crashes the process here."""
    frames = [frame_of(640, 480, seed) for seed in range(4)]
    fmt = FrameFormat(max_side=224)
    one_by_one = [encode_frame(f, fmt) for f in frames]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda f: encode_frame(f, fmt), frames * 8)) == one_by_one * 8


@pytest.mark.parametrize("video", ["b-frames", "rotated-wide-pixels"])
def test_the_dataset_build_and_the_live_path_give_identical_bytes(
    tmp_path: Path, video: str
) -> None:
    """The train/serve pixel contract: a frame the offline extractor keeps, and the same
    decoded frame given to :func:`encode_frame` as the live server does, are the same JPEG."""
    if video == "b-frames":  # the extractor skips the non-reference pictures it does not keep
        path = write_video(tmp_path / "v.mp4", range(60), size=(320, 240), preset="medium")
    else:
        path = still_video(
            tmp_path / "v.mp4", counter_image(9), sar=Fraction(3, 2), quarter_turn=True
        )
    options = ExtractOptions(max_side=200, jpeg_quality=80, min_frames=1, workers=1)
    clips = list(iter_clips(path, SamplingSpec(stride_frames=6, clip_frames=4), options))
    frames, sar = decoded(path)

    kept = [(t, jpeg) for c in clips for t, jpeg in zip(c.timestamps, c.frames_jpeg, strict=True)]
    assert len(kept) == (10 if video == "b-frames" else 1)
    for t, jpeg in kept:
        (frame,) = (f for f in frames if f.time is not None and abs(f.time - t) < 1e-6)
        assert encode_frame(frame, options.frame_format, sar) == jpeg
