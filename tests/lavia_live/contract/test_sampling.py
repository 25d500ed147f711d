from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lavia_live.contract.sampling import (
    SamplingSpec,
    TimestampSampler,
    plan_clips,
    sample_indices,
)

TICKS = 90_000  # RTP video clock
WRAP = 2**32
TIME_BASE = Fraction(1, TICKS)


@dataclass
class Timeline:
    fps: float
    true_times: list[float] = field(repr=False)  # real time of each delivered frame
    pts: list[int] = field(repr=False)  # what the stream says (1/90000 s), resets and wraps
    resets: int
    max_jitter: float
    max_gap: float  # longest real interval between consecutive delivered frames


@dataclass(frozen=True)
class Scenario:
    """Small, printable parameters of a timeline (hypothesis shows these on failure)."""

    fps: float
    jitter: float  # fraction of a frame period
    drop: float  # probability a frame never arrives
    resets: int
    seed: int
    base: int  # first pts value (near the 32-bit wrap for some scenarios)

    def timeline(self, duration: float = 600.0) -> Timeline:
        rng = np.random.default_rng(self.seed)
        jitter = self.jitter / self.fps
        n = int(duration * self.fps)
        true = np.arange(n) / self.fps + rng.uniform(-jitter, jitter, n)
        true[0] = max(true[0], 0.0)  # a negative first time would be a wrap (resets=0 lies)
        keep = rng.random(n) >= self.drop
        keep[0] = True
        true = true[keep]
        reset_at = set(
            rng.choice(np.arange(1, len(true)), size=self.resets, replace=False).tolist()
        )
        pts: list[int] = []
        offset = self.base
        for i, t in enumerate(true):
            raw = round(t * TICKS)
            if i in reset_at:
                current = (raw + offset) % WRAP
                # A restart: the counter jumps back by at least a second (or wraps far ahead).
                target = int(rng.integers(0, current - TICKS)) if current > 2 * TICKS else WRAP // 2
                offset = target - raw
            pts.append((raw + offset) % WRAP)
        max_gap = float(np.diff(true).max(initial=0))
        return Timeline(self.fps, true.tolist(), pts, self.resets, jitter, max_gap)


scenarios = st.builds(
    Scenario,
    fps=st.floats(5, 60),
    jitter=st.floats(0, 0.25),
    drop=st.floats(0, 0.5),
    resets=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
    base=st.one_of(st.just(0), st.integers(0, WRAP - 1), st.just(WRAP - 5 * TICKS)),
)


def run(timeline: Timeline) -> tuple[list[float], list[float]]:
    sampler = TimestampSampler()
    kept_true: list[float] = []
    kept_session: list[float] = []
    for t, p in zip(timeline.true_times, timeline.pts, strict=True):
        got = sampler.offer(p, TIME_BASE)
        if got is not None:
            kept_true.append(t)
            kept_session.append(got)
    return kept_true, kept_session


@settings(max_examples=40, deadline=None)
@given(scenarios)
def test_about_one_frame_per_second_over_ten_minutes(scenario: Scenario) -> None:
    timeline = scenario.timeline()
    kept_true, kept_session = run(timeline)
    duration = timeline.true_times[-1] - timeline.true_times[0]
    slack = 2 + timeline.resets
    assert len(kept_true) <= duration + slack
    # none lost: every second of real time in which a frame arrived yields one (dropped
    # frames can empty a second; the 0.5 s spacing rule costs up to ~2% when frames are
    # sparse: 5 fps with half of them dropped and jitter kept 569 of 579 seconds)
    t0 = timeline.true_times[0]
    seconds_with_frames = len({int(t - t0) for t in timeline.true_times})
    sparse = scenario.fps * (1 - scenario.drop) < 4
    assert len(kept_true) >= (0.975 if sparse else 0.99) * seconds_with_frames - slack
    # never two within half a second (session clock exactly; real time up to jitter)
    assert all(b - a > 0.5 for a, b in itertools.pairwise(kept_session))
    assert all(b - a > 0.5 - 2 * timeline.max_jitter for a, b in itertools.pairwise(kept_true))
    # the next kept frame is at most one interval plus one delivery gap away; across a reset
    # the session clock resumes one shortest recent interval on, so it can lag real time by
    # up to one more delivery gap (fps=11.9, 28% drops, one reset: 1.513 s against 1.504 s)
    worst = 1.0 + timeline.max_gap * (2 if timeline.resets else 1) + 2 * timeline.max_jitter
    assert all(b - a <= worst + 1e-9 for a, b in itertools.pairwise(kept_true))
    # the session clock handed out never goes back, even across resets and wraps
    assert kept_session == sorted(kept_session)


@settings(max_examples=60, deadline=None)
@given(st.floats(5, 60), st.floats(2, 120), st.floats(0, 10))
def test_no_burst_of_catch_up_frames_after_a_gap(fps: float, gap: float, start: float) -> None:
    before = [start + i / fps for i in range(int(10 * fps))]
    resume = before[-1] + gap
    after = [resume + i / fps for i in range(int(10 * fps))]
    sampler = TimestampSampler()
    kept = [t for t in before + after if sampler.offer(t) is not None]
    in_first_two_seconds = [t for t in kept if resume <= t < resume + 2.0]
    assert 1 <= len(in_first_two_seconds) <= 3  # grid points only: no catch-up
    assert len(kept) <= 10 + 10 + 2  # one per second of footage, none for the gap
    # More than half a second apart on the session clock; the input times here differ from
    # it by float rounding of the gap offset (fps=6, gap=22 kept two frames 0.5 - 4e-15 apart).
    assert all(b - a > 0.5 - 1e-9 for a, b in itertools.pairwise(kept))
    assert kept[len([t for t in kept if t < resume])] == pytest.approx(resume)


def test_complete_stream_keeps_one_frame_every_second() -> None:
    sampler = TimestampSampler()
    kept = [i for i in range(30 * 600) if sampler.offer(i * 3000, TIME_BASE) is not None]
    assert kept == list(range(0, 30 * 600, 30))


@pytest.mark.parametrize("fps", [30, 25, 60, 29.97, 15])
def test_constant_rate_stream_keeps_the_same_frames_as_the_offline_indices(fps: float) -> None:
    n = int(fps * 40)
    sampler = TimestampSampler()
    live = [i for i in range(n) if sampler.offer(i / fps) is not None]
    assert live == sample_indices(fps, n)


def test_reference_stride_is_every_30th_frame_at_30_fps() -> None:
    assert sample_indices(30, 95) == [0, 30, 60, 90]
    assert sample_indices(60, 121) == [0, 60, 120]
    assert sample_indices(25, 51) == [0, 25, 50]


def test_small_backwards_jitter_is_ignored_not_a_reset() -> None:
    sampler = TimestampSampler()
    assert sampler.offer(0.0) == 0.0
    assert sampler.offer(0.5) is None
    assert sampler.offer(0.4) is None  # out of order by 0.1 s
    assert sampler.offer(1.0) == 1.0


def test_non_finite_timestamps_are_skipped() -> None:
    sampler = TimestampSampler()
    assert sampler.offer(float("nan")) is None
    assert sampler.offer(0.0) == 0.0


def test_plan_clips_cuts_450_frame_clips_of_15_at_30_fps() -> None:
    plans = plan_clips(30, 450 * 3 + 300, min_frames=8)
    assert [p.frame_indices[0] for p in plans] == [0, 450, 900, 1350]
    assert all(len(p.frame_indices) == 15 for p in plans[:3])
    assert len(plans[3].frame_indices) == 10  # 300 frames -> 10 samples, kept (>= 8)
    assert plans[1].start_frame == 450 and plans[1].end_frame == 900
    assert plans[1].frame_indices == tuple(range(450, 900, 30))
    assert plans[2].timestamps[0] == pytest.approx(30.0)


def test_plan_clips_drops_a_short_last_clip_and_scales_with_fps() -> None:
    assert len(plan_clips(30, 450 * 2 + 120, min_frames=8)) == 2  # 4 samples < 8
    plans = plan_clips(25, 375 * 2)
    assert [p.end_frame for p in plans] == [375, 750]
    assert plans[0].frame_indices == tuple(range(0, 375, 25))


def test_spec_validation_and_derived_values() -> None:
    spec = SamplingSpec()
    assert spec.interval_s == 1.0
    assert spec.clip_source_frames == 450
    assert spec.clip_duration_s == 15.0
    with pytest.raises(ValueError, match="stride_frames"):
        SamplingSpec(stride_frames=0)
    with pytest.raises(ValueError, match="fps"):
        sample_indices(0, 100)
