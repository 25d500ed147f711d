from __future__ import annotations

import numpy as np
import pytest

from lavia_live.contract.clip import Clip, Frame, RollingClipBuffer
from lavia_live.errors import ClipError


def frame(t: float, value: int = 0) -> Frame:
    return Frame(np.full((4, 6, 3), value, dtype=np.uint8), t)


def test_rolling_buffer_keeps_the_last_15_oldest_first() -> None:
    buffer = RollingClipBuffer()
    for t in range(40):
        buffer.push(frame(float(t), t))
    clip = buffer.snapshot()
    assert len(clip) == 15
    assert clip.timestamps == tuple(float(t) for t in range(25, 40))
    assert [int(f.image[0, 0, 0]) for f in clip.frames] == list(range(25, 40))
    assert (clip.start, clip.end) == (25.0, 39.0)
    assert buffer.pushed == 40


def test_buffer_memory_is_bounded_over_an_hour() -> None:
    buffer = RollingClipBuffer(capacity=15)
    for t in range(3600):
        buffer.push(frame(float(t)))
    assert len(buffer) == 15
    assert len(buffer._frames) == 15  # the deque itself, not just the snapshot


def test_buffer_readiness_follows_the_minimum() -> None:
    buffer = RollingClipBuffer()
    for t in range(3):
        buffer.push(frame(float(t)))
    assert not buffer.ready(4)
    buffer.push(frame(3.0))
    assert buffer.ready(4)
    assert buffer.ready(99) is False
    buffer.clear()
    assert len(buffer) == 0 and len(buffer.snapshot()) == 0


def test_out_of_order_frames_are_rejected() -> None:
    buffer = RollingClipBuffer()
    buffer.push(frame(2.0))
    with pytest.raises(ClipError, match="not newer"):
        buffer.push(frame(2.0))
    with pytest.raises(ClipError, match="oldest first"):
        Clip.of([frame(1.0), frame(0.5)])


def test_clip_limits_and_frame_checks() -> None:
    with pytest.raises(ClipError, match="at most 15"):
        Clip.of([frame(float(t)) for t in range(16)])
    with pytest.raises(ClipError, match="uint8 RGB"):
        Frame(np.zeros((4, 4), dtype=np.uint8), 0.0)
    with pytest.raises(ClipError, match="uint8 RGB"):
        Frame(np.zeros((4, 4, 3), dtype=np.float32), 0.0)
    with pytest.raises(ValueError, match="capacity"):
        RollingClipBuffer(0)
