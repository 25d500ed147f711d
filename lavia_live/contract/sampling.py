"""Which frames the model sees: one every 30 source frames at the 30 fps reference rate.

The reference stride (30 frames at 30 fps) is one frame per second of real time. Two
helpers apply it:

- :class:`TimestampSampler` for live video, whose frame rate varies (WebRTC adapts fps
  under load). It works on presentation timestamps, never on frame counts, and copes with
  jitter, dropped frames, a timestamp reset or wrap, and gaps (no burst of catch-up frames
  after a gap). It is also what the offline extractor uses for variable-frame-rate files.
- :func:`plan_clips` for constant-rate files: the frame indices to keep, grouped into
  consecutive clips of ``clip_frames`` samples (450 source frames at 30 fps).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

_EPS = 1e-6  # seconds; absorbs float error of timestamps that sit exactly on the grid

REFERENCE_FPS = 30.0
STRIDE_FRAMES = 30
CLIP_FRAMES = 15


@dataclass(frozen=True)
class SamplingSpec:
    """The sampling half of the contract; defaults are the LaViA reference values."""

    reference_fps: float = REFERENCE_FPS
    stride_frames: int = STRIDE_FRAMES
    clip_frames: int = CLIP_FRAMES

    def __post_init__(self) -> None:
        if not self.reference_fps > 0:
            raise ValueError(f"reference_fps must be positive, got {self.reference_fps}")
        if self.stride_frames < 1:
            raise ValueError(f"stride_frames must be >= 1, got {self.stride_frames}")
        if self.clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {self.clip_frames}")

    @property
    def interval_s(self) -> float:
        """Seconds of real time between two sampled frames (1.0 for the reference)."""
        return self.stride_frames / self.reference_fps

    @property
    def clip_source_frames(self) -> int:
        """Source frames one clip spans at the reference rate (450 for the reference)."""
        return self.stride_frames * self.clip_frames

    @property
    def clip_duration_s(self) -> float:
        return self.interval_s * self.clip_frames


class TimestampSampler:
    """Keeps one frame per ``spec.interval_s`` of presentation time.

    Feed every decoded frame's timestamp to :meth:`offer`; it returns the frame's time on a
    continuous session clock (seconds, starting at 0) when the frame is to be kept, else
    ``None``. The kept frames sit on a grid anchored at the first frame, so the long-run
    rate is exact; any two kept frames are more than half an interval apart.

    - Jitter and drops: a frame is kept when it is the first at or after its grid point
      and more than half an interval after the last kept frame.
    - Gaps: grid points that fell into a gap are skipped, so a gap never produces a burst
      of catch-up frames.
    - Reset or wrap: a timestamp that jumps back by more than ``reset_tolerance_s``, or
      forward by more than ``max_gap_s``, starts a new segment; the session clock carries
      on from the last frame, so timestamps handed out stay monotonic.
    """

    def __init__(
        self,
        spec: SamplingSpec | None = None,
        *,
        reset_tolerance_s: float = 0.5,
        max_gap_s: float = 300.0,
    ) -> None:
        self.spec = spec or SamplingSpec()
        self._interval = self.spec.interval_s
        self._reset_tolerance = reset_tolerance_s
        self._max_gap = max_gap_s
        self._offset = 0.0  # session time = pts seconds + offset
        self._last_pts: float | None = None  # raw seconds of the last frame seen
        self._last_session: float = 0.0
        self._deltas: deque[float] = deque(maxlen=32)  # recent frame intervals
        self._anchor: float | None = None  # session time of the first frame: the grid origin
        self._last_kept = 0.0
        self._next_due = 0.0

    @property
    def last_time(self) -> float:
        """Session time of the most recent frame offered (kept or not)."""
        return self._last_session

    def offer(self, pts: int | float, time_base: Fraction | float | None = None) -> float | None:
        """Offer one frame; return its session time if it is to be kept.

        ``pts`` is in units of ``time_base`` (e.g. aiortc/PyAV frames), or in seconds when
        ``time_base`` is ``None``.
        """
        seconds = float(pts * time_base) if time_base is not None else float(pts)
        if not math.isfinite(seconds):
            return None
        if self._last_pts is None:
            self._offset = -seconds
        else:
            delta = seconds - self._last_pts
            if delta < -self._reset_tolerance or delta > self._max_gap:
                # A new timestamp segment: continue the session clock one frame later. The
                # shortest recent interval never runs the clock ahead of real time.
                period = min(self._deltas, default=1.0 / self.spec.reference_fps)
                self._offset = self._last_session + period - seconds
            elif delta <= 0:
                # Small backwards jitter or a duplicate: never keep it.
                return None
            else:
                self._deltas.append(delta)
        self._last_pts = seconds
        now = seconds + self._offset
        self._last_session = now
        return self._decide(now)

    def _decide(self, now: float) -> float | None:
        if self._anchor is None:
            self._anchor = self._last_kept = now
            self._next_due = now + self._interval
            return now
        if now < self._next_due - _EPS or now - self._last_kept <= self._interval / 2:
            return None
        # The next grid point after this frame: grid points that fell into a gap are
        # skipped, never caught up.
        k = math.floor((now - self._anchor) / self._interval + _EPS) + 1
        self._next_due = self._anchor + k * self._interval
        self._last_kept = now
        return now


@dataclass(frozen=True)
class ClipPlan:
    """One clip of a file: the source-frame indices to keep, oldest first."""

    index: int
    start_frame: int  # first source frame the clip covers
    end_frame: int  # one past the last source frame it covers
    frame_indices: tuple[int, ...]
    timestamps: tuple[float, ...]  # seconds from the start of the file

    @property
    def start_s(self) -> float:
        return self.timestamps[0]


def sample_indices(fps: float, n_frames: int, spec: SamplingSpec | None = None) -> list[int]:
    """Indices of the frames to keep in a constant-rate file: one per interval of time.

    The stride scales with the file's rate: 30 frames at 30 fps, 25 at 25 fps, 60 at
    60 fps; non-integer rates (29.97) take the first frame at or after each grid time,
    exactly as :class:`TimestampSampler` does on the same stream.
    """
    spec = spec or SamplingSpec()
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if n_frames <= 0:
        return []
    stride = spec.interval_s * fps
    indices: list[int] = []
    k = 0
    while True:
        idx = math.ceil(k * stride - _EPS)
        if idx >= n_frames:
            return indices
        if not indices or idx > indices[-1]:
            indices.append(idx)
        k += 1


def plan_clips(
    fps: float,
    n_frames: int,
    spec: SamplingSpec | None = None,
    *,
    min_frames: int = 1,
) -> list[ClipPlan]:
    """Cut a constant-rate file into consecutive clips of ``spec.clip_frames`` samples.

    At 30 fps each clip spans 450 source frames. The last, partial clip is kept when it
    has at least ``min_frames`` sampled frames.
    """
    spec = spec or SamplingSpec()
    keep = sample_indices(fps, n_frames, spec)
    span = spec.interval_s * spec.clip_frames * fps
    plans: list[ClipPlan] = []
    for c, first in enumerate(range(0, len(keep), spec.clip_frames)):
        idx = tuple(keep[first : first + spec.clip_frames])
        if len(idx) < min(min_frames, spec.clip_frames):
            break
        start = round(c * span)
        end = min(round((c + 1) * span), n_frames)
        plans.append(
            ClipPlan(
                index=c,
                start_frame=start,
                end_frame=end,
                frame_indices=idx,
                timestamps=tuple(i / fps for i in idx),
            )
        )
    return plans
