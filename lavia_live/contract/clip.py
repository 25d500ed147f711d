"""The clip: up to 15 sampled frames with their timestamps, oldest first.

Offline, a clip is one 450-frame window of a video. Live, it is a snapshot of the
:class:`RollingClipBuffer`, which holds the last ``clip_frames`` sampled frames and never
more, so a session that runs for hours holds constant memory. A frame is either RGB pixels
(:class:`Frame`) or the model image already encoded by :mod:`lavia_live.contract.frames`
(:class:`EncodedFrame`, what a live session keeps and an engine receives).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from lavia_live.contract.sampling import CLIP_FRAMES
from lavia_live.errors import ClipError

Image = npt.NDArray[np.uint8]  # H x W x 3, RGB


@dataclass(frozen=True)
class Frame:
    """One sampled frame: RGB pixels and its time in seconds (session or file clock)."""

    image: Image
    timestamp: float

    def __post_init__(self) -> None:
        shape: tuple[int, ...] = tuple(getattr(self.image, "shape", ()))
        if len(shape) != 3 or shape[2] != 3 or self.image.dtype != np.uint8:
            raise ClipError(
                f"a frame must be an HxWx3 uint8 RGB array, got shape {shape} "
                f"dtype {getattr(self.image, 'dtype', type(self.image).__name__)}"
            )


@dataclass(frozen=True)
class EncodedFrame:
    """One sampled frame as the model gets it: JPEG bytes and its time in seconds."""

    jpeg: bytes
    timestamp: float


class Timed(Protocol):
    @property
    def timestamp(self) -> float: ...


F = TypeVar("F", bound=Timed)


@dataclass(frozen=True)
class Clip(Generic[F]):
    """Up to ``max_frames`` frames, oldest first, with strictly increasing timestamps."""

    frames: tuple[F, ...]
    max_frames: int = CLIP_FRAMES

    def __post_init__(self) -> None:
        if len(self.frames) > self.max_frames:
            raise ClipError(
                f"a clip holds at most {self.max_frames} frames, got {len(self.frames)}"
            )
        times = [f.timestamp for f in self.frames]
        for a, b in itertools.pairwise(times):
            if not b > a:
                raise ClipError(f"clip frames must be oldest first, got {a} before {b}")

    @classmethod
    def of(cls, frames: Sequence[F], max_frames: int = CLIP_FRAMES) -> Clip[F]:
        return cls(tuple(frames), max_frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[F]:
        return iter(self.frames)

    @property
    def timestamps(self) -> tuple[float, ...]:
        return tuple(f.timestamp for f in self.frames)

    @property
    def start(self) -> float:
        return self.frames[0].timestamp if self.frames else 0.0

    @property
    def end(self) -> float:
        return self.frames[-1].timestamp if self.frames else 0.0


class RollingClipBuffer(Generic[F]):
    """The last ``capacity`` sampled frames of a live session; bounded by construction."""

    def __init__(self, capacity: int = CLIP_FRAMES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._frames: deque[F] = deque(maxlen=capacity)
        self._pushed = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def pushed(self) -> int:
        """Frames pushed since creation (a clip's identity for the scheduler)."""
        return self._pushed

    def push(self, frame: F) -> None:
        if self._frames and not frame.timestamp > self._frames[-1].timestamp:
            raise ClipError(
                f"frame at {frame.timestamp}s is not newer than the last one "
                f"({self._frames[-1].timestamp}s)"
            )
        self._frames.append(frame)
        self._pushed += 1

    def ready(self, min_frames: int) -> bool:
        return len(self._frames) >= min(min_frames, self.capacity)

    def snapshot(self) -> Clip[F]:
        return Clip(tuple(self._frames), self.capacity)

    def clear(self) -> None:
        self._frames.clear()
