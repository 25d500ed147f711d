"""How a decoded video frame becomes one of the model's input images.

Both sides convert only the frames they keep, with :func:`encode_frame`: the live server on
each sampled ``av.VideoFrame`` from aiortc, the dataset build on each kept frame of a file.
One swscale pass resizes (display orientation and sample aspect ratio applied, the longer
side at most :attr:`FrameFormat.max_side`, both dimensions even) and converts to RGB, then
Pillow turns the picture upright and encodes the JPEG. So training and serving see the same
pixels, byte for byte, for the same decoded frame.

:func:`encode_frame` is safe to call from worker threads, on the same frame too: each call
makes its own swscale context (single-threaded) and changes nothing in the frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.reformatter import VideoReformatter
from PIL import Image

# Counterclockwise display rotation (degrees) -> the Pillow transpose that applies it.
_ROTATIONS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class FrameFormat:
    """The image half of the contract: the size and JPEG quality of every model frame."""

    max_side: int = 448  # the longer side at most this (aspect kept, both dimensions even)
    jpeg_quality: int = 90  # Pillow's JPEG quality, 1..100

    def __post_init__(self) -> None:
        if self.max_side < 2:
            raise ValueError(f"max_side must be >= 2, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Output size: longer side at most ``max_side``, aspect kept, both dimensions even."""
    scale = min(1.0, max_side / max(width, height))
    limit = max(2, max_side - max_side % 2)

    def even(x: float) -> int:
        return min(limit, max(2, 2 * round(x / 2)))

    return even(width * scale), even(height * scale)


def encode_frame(
    frame: av.VideoFrame, fmt: FrameFormat, sample_aspect_ratio: Fraction | None = None
) -> bytes:
    """``frame`` as the model sees it: resized and JPEG-encoded, in display orientation.

    ``frame.rotation`` (counterclockwise degrees, from the container's display matrix) is
    applied, and ``sample_aspect_ratio`` (the stream's pixel aspect; ``None`` or 0: square
    pixels) stretches the width, so the image is what a player shows.
    """
    turn = round(frame.rotation / 90) * 90 % 360
    sar = sample_aspect_ratio
    width = frame.width * (float(sar) if sar else 1.0)
    disp_w, disp_h = (frame.height, width) if turn in (90, 270) else (width, frame.height)
    out_w, out_h = scaled_size(round(disp_w), round(disp_h), fmt.max_side)
    if turn in (90, 270):
        out_w, out_h = out_h, out_w
    # A swscale context of this call's own: ``frame.reformat`` would reuse one cached on the
    # frame, which two threads converting the same frame would share (and crash in).
    # threads=1: a new context per call; its own thread pool would cost more.
    rgb = VideoReformatter().reformat(frame, out_w, out_h, "rgb24", threads=1)
    # The same pixels as PyAV's to_image(), in a fraction of its time at 448 px.
    image = Image.fromarray(rgb.to_ndarray())
    if turn in _ROTATIONS:
        image = image.transpose(_ROTATIONS[turn])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=fmt.jpeg_quality)
    return buffer.getvalue()
