"""Small real videos encoded here with PyAV (libx264, quick), for the frame and clip tests.

Every frame :func:`write_video` generates paints its own index as three horizontal bands of
gray (base-16 digits, 16 levels apart), so decoding a JPEG back (:func:`read_counter`)
tells which source frame it came from.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

W, H = 160, 120


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
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> Path:
    """Frame ``i`` carries counter ``i`` and pts ``pts[i]`` (in ``time_base``, default 1/rate).

    The encoder gets ``options`` if given, else ``preset`` (veryfast has B-frames)."""
    width, height = size
    rng = np.random.default_rng(7)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {**options} if options is not None else {"preset": preset}
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


def still_video(
    path: Path, image: np.ndarray, *, sar: Fraction | None = None, quarter_turn: bool = False
) -> Path:
    """A one-frame mp4 of ``image``; ``sar``: its pixel aspect ratio; ``quarter_turn``: its
    display matrix says "rotate 90" (shown turned a quarter clockwise)."""
    height, width = image.shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    if quarter_turn:
        data = bytearray(path.read_bytes())
        at = data.index(b"tkhd") + 4 + 40  # version 0 header: the 3x3 display matrix
        data[at : at + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
        path.write_bytes(bytes(data))
    return path
