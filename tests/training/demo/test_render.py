"""The procedural demo renderer: timeline, determinism, distinct steps, the written mp4."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lavia_live.contract.tasks import TaskContext, load_task
from lavia_live.errors import ConfigError
from training.demo.render import (
    DemoSpec,
    DemoTruth,
    StepSpan,
    demo_seeds,
    plan_demo,
    render_demo_video,
    render_frame,
)

TASK_FILE = Path(__file__).resolve().parents[3] / "data" / "tasks" / "demo_oil_change.yaml"
FAST = DemoSpec(min_step_s=1.0, max_step_s=2.0, narration=False)
STILL = dataclasses.replace(FAST, mistake_rate=0.0, max_shake_px=0.0, max_distractors=0)


@pytest.fixture(scope="module")
def task() -> TaskContext:
    return load_task(TASK_FILE)


def _mid(span: StepSpan, at: float = 0.5) -> int:
    return span.start_frame + int(at * (span.end_frame - span.start_frame))


def _small(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """What the model sees: the frame downscaled to 112 px wide."""
    height = round(image.shape[0] * 112 / image.shape[1])
    return np.asarray(
        Image.fromarray(image).resize((112, height), Image.Resampling.BILINEAR), np.float32
    )


def _diff(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return float(np.abs(a - b).mean())


def test_same_seed_same_truth_and_pixels(task: TaskContext) -> None:
    spec = dataclasses.replace(FAST, mistake_rate=0.5)
    a, b = plan_demo(task, 7, spec), plan_demo(task, 7, spec)
    assert a == b
    frames = [0, a.n_frames // 2, a.n_frames - 1]
    first = [render_frame(task, a, f, 7, spec) for f in frames]
    again = [render_frame(task, b, f, 7, spec) for f in reversed(frames)][::-1]  # random access
    for x, y in zip(first, again, strict=True):
        assert x.shape == (spec.height, spec.width, 3) and x.dtype == np.uint8
        assert np.array_equal(x, y)


def test_different_seeds_differ(task: TaskContext) -> None:
    a, b = plan_demo(task, 1, FAST), plan_demo(task, 2, FAST)
    assert a.spans != b.spans
    assert not np.array_equal(render_frame(task, a, 0, 1, FAST), render_frame(task, b, 0, 2, FAST))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 99_999), rate=st.sampled_from([0.0, 0.25, 1.0]))
def test_timeline_covers_every_frame_once(task: TaskContext, seed: int, rate: float) -> None:
    spec = dataclasses.replace(FAST, mistake_rate=rate)
    truth = plan_demo(task, seed, spec)
    assert truth.spans[0].start_frame == 0 and truth.spans[-1].end_frame == truth.n_frames
    for before, after in zip(truth.spans, truth.spans[1:], strict=False):
        assert before.end_frame == after.start_frame
    for span in truth.spans:
        assert 1 * spec.fps - 1 <= span.end_frame - span.start_frame <= 2 * spec.fps + 1
        assert truth.step_at(span.start_frame) == span.step == truth.step_at(span.end_frame - 1)
    steps = [span.step for span in truth.spans]
    if not truth.mistakes:
        assert steps == list(range(len(task.steps)))
    assert len(truth.mistakes) <= 1
    if rate == 0.0:
        assert truth.mistakes == ()
    if rate == 1.0:
        assert len(truth.mistakes) == 1


def test_mistakes_are_recorded_and_shape_the_spans(task: TaskContext) -> None:
    spec = dataclasses.replace(FAST, mistake_rate=1.0)
    kinds = set()
    pan, cap, plug, refit, pour = 0, 1, 2, 4, 5
    for seed in range(30):
        truth = plan_demo(task, seed, spec)
        (mistake,) = truth.mistakes
        step, frame, end, kind = (mistake[k] for k in ("step", "frame", "end_frame", "kind"))
        assert isinstance(step, int) and isinstance(frame, int) and isinstance(end, int)
        assert 0 <= frame < end <= truth.n_frames and mistake["text"]
        steps = [span.step for span in truth.spans]
        kinds.add(kind)
        showing = [truth.step_at(f) for f in range(frame, end)]
        assert truth.mistake_at(frame) == mistake["text"] == truth.mistake_at(end - 1)
        assert truth.mistake_at(end) is None if end < truth.n_frames else True
        if kind == "skipped_step":  # no pan: warned until the oil has drained
            assert step == pan and pan not in steps and sorted(steps) == [1, 2, 3, 4, 5, 6]
            assert set(showing) == {cap, plug, 3}
        elif kind == "out_of_order":  # the plug loosened before the pan or the cap
            assert step == plug and sorted(steps) == list(range(7)) and steps != sorted(steps)
            assert set(showing) == {plug}
            assert steps.index(plug) < steps.index(pan) or steps.index(plug) < steps.index(cap)
        else:  # new oil poured with the plug out
            assert kind == "wrong_action" and step == pour
            assert refit not in steps and set(showing) == {pour}
    assert kinds == {"skipped_step", "out_of_order", "wrong_action"}


def test_next_step_after_a_mistake_is_the_step_it_left_undone(task: TaskContext) -> None:
    spec = dataclasses.replace(FAST, mistake_rate=1.0)
    seen = set()
    for seed in range(30):
        truth = plan_demo(task, seed, spec)
        (mistake,) = truth.mistakes
        frame, end = int(str(mistake["frame"])), int(str(mistake["end_frame"]))
        _, todo = truth.steps_to_do(frame)
        expected = {"skipped_step": 0, "wrong_action": 4}.get(str(mistake["kind"]))
        if expected is None:  # out of order: the pan or the cap, whichever is still to do
            expected = 0 if truth.spans[0].step == 2 else 1
        assert todo[0] == expected
        seen.add(str(mistake["kind"]))
        if end < truth.n_frames:  # once it no longer shows, the task goes on in order
            current, todo = truth.steps_to_do(end)
            if any(s > current for s in todo):
                assert todo[0] > current
    assert len(seen) == 3


def test_step_at_rejects_frames_outside_the_video(task: TaskContext) -> None:
    truth = plan_demo(task, 3, FAST)
    with pytest.raises(ValueError, match="outside"):
        truth.step_at(truth.n_frames)
    with pytest.raises(ValueError, match="outside"):
        truth.step_at(-1)


def test_bad_spec_and_wrong_task_are_rejected(task: TaskContext) -> None:
    with pytest.raises(ValueError, match="even"):
        DemoSpec(width=321)
    with pytest.raises(ValueError, match="min_step_s"):
        DemoSpec(min_step_s=3.0, max_step_s=2.0)
    with pytest.raises(ValueError, match="mistake_rate"):
        DemoSpec(mistake_rate=1.5)
    other = dataclasses.replace(task, id="bake_bread")
    with pytest.raises(ValueError, match="demo_oil_change"):
        plan_demo(other, 0, FAST)
    with pytest.raises(ValueError, match="seed"):
        plan_demo(task, -1, FAST)


def test_truth_json_round_trips(task: TaskContext) -> None:
    truth = plan_demo(task, 11, dataclasses.replace(FAST, mistake_rate=1.0, narration=True))
    assert truth.mistakes and truth.narration
    assert DemoTruth.from_json(json.loads(json.dumps(truth.to_json()))) == truth
    with pytest.raises(ValueError, match="not a demo truth"):
        DemoTruth.from_json({"video": "x.mp4"})


def test_steps_are_visually_distinct_and_stable_within_a_step(task: TaskContext) -> None:
    seed = 5
    spec = dataclasses.replace(STILL, min_step_s=2.0, max_step_s=3.0)
    truth = plan_demo(task, seed, spec)
    assert [s.step for s in truth.spans] == list(range(7))

    def small(frame: int) -> npt.NDArray[np.float32]:
        return _small(render_frame(task, truth, frame, seed, spec))

    mids = [small(_mid(span)) for span in truth.spans]
    for i, span in enumerate(truth.spans):
        others = [_diff(mids[i], mids[j]) for j in range(len(mids)) if j != i]
        within = _diff(small(_mid(span, 0.4)), small(_mid(span, 0.6)))
        assert min(others) > 1.0, f"step {i} looks like another step ({min(others):.2f})"
        assert within < min(others), f"step {i}: {within:.2f} within vs {min(others):.2f}"


def test_a_skipped_step_is_visible(task: TaskContext) -> None:
    """Pouring with the drain plug still out shows new oil running out of the engine."""
    n = 30
    normal = tuple(StepSpan(s, s * n, (s + 1) * n) for s in range(7))
    skipped = tuple(StepSpan(s, i * n, (i + 1) * n) for i, s in enumerate([0, 1, 2, 3, 5, 6]))
    base = DemoTruth("x.mp4", task.id, 0, 30, 7 * n, normal, (), ())
    mistake = dataclasses.replace(base, n_frames=6 * n, spans=skipped)
    pour_ok = render_frame(task, base, _mid(normal[5]), 0, STILL)
    pour_bad = render_frame(task, mistake, _mid(skipped[4]), 0, STILL)
    before_ok = render_frame(task, base, _mid(normal[3]), 0, STILL)
    before_bad = render_frame(task, mistake, _mid(skipped[3]), 0, STILL)
    assert np.array_equal(before_ok, before_bad)  # same scene until the mistake
    assert _diff(_small(pour_ok), _small(pour_bad)) > 0.5


def _decode(path: Path) -> tuple[int, float, tuple[int, int], float | None]:
    """Frame count, fps, size, and audio seconds (None without an audio stream)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = float(video.average_rate or 0)
        size = (video.codec_context.width, video.codec_context.height)
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return frames, fps, size, None
        rate = container.streams.audio[0].sample_rate
        samples = sum(frame.samples for frame in container.decode(audio=0))
    return frames, fps, size, samples / rate


def test_render_demo_video_writes_a_silent_mp4_and_its_truth(
    task: TaskContext, tmp_path: Path
) -> None:
    spec = dataclasses.replace(FAST, width=192, height=144)
    truth = render_demo_video(task, 42, tmp_path, spec)
    video = tmp_path / "demo_00042.mp4"
    assert truth.video == video.name and truth.narration == ()
    frames, fps, size, audio = _decode(video)
    assert (frames, fps, size, audio) == (truth.n_frames, 30.0, (192, 144), None)
    stored = json.loads((tmp_path / "demo_00042.truth.json").read_text(encoding="utf-8"))
    assert DemoTruth.from_json(stored) == truth == plan_demo(task, 42, spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == [video.name, "demo_00042.truth.json"]


def _seconds(value: object) -> float:
    assert isinstance(value, float | int)
    return float(value)


def test_render_demo_video_narrates_each_step(task: TaskContext, tmp_path: Path) -> None:
    spec = DemoSpec(min_step_s=3.0, max_step_s=4.0, mistake_rate=0.0)
    truth = render_demo_video(task, 3, tmp_path, spec)
    frames, fps, size, audio = _decode(tmp_path / truth.video)
    assert (frames, fps, size) == (truth.n_frames, 30.0, (320, 240))
    assert audio is not None and abs(audio - truth.duration_s) < 0.5
    lines = truth.narration
    assert len(lines) >= 5 and "slide the oil pan" in str(lines[0]["text"])
    starts = [_seconds(line["start"]) for line in lines]
    ends = [_seconds(line["end"]) for line in lines]
    assert all(s < e <= truth.duration_s for s, e in zip(starts, ends, strict=True))
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))  # no overlaps
    with av.open(str(tmp_path / truth.video)) as container:
        rate = container.streams.audio[0].sample_rate
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    # Speech sits where the truth says: loud inside the first line, quiet before it.
    speech = pcm[int(starts[0] * rate) : int(ends[0] * rate)]
    silence = pcm[: int((starts[0] - 0.1) * rate)]
    assert np.sqrt(np.mean(speech**2)) > 10 * np.sqrt(np.mean(silence**2)) + 1e-4


def test_demo_seeds_can_pick_videos_that_start_with_a_later_step(task: TaskContext) -> None:
    spec = DemoSpec(mistake_rate=0.5, narration=False)
    assert demo_seeds(task, spec, 40, 3) == [40, 41, 42]
    seeds = demo_seeds(task, spec, 800, 5, starting_step=3)
    assert len(seeds) == 5 and seeds == sorted(seeds) and seeds[0] >= 800
    assert all(plan_demo(task, s, spec).spans[0].step == 2 for s in seeds)
    skipped = [s for s in range(800, seeds[-1]) if s not in seeds]
    assert skipped and all(plan_demo(task, s, spec).spans[0].step != 2 for s in skipped)
    with pytest.raises(ConfigError, match="start with step 4"):  # no mistake starts there
        demo_seeds(task, spec, 0, 1, starting_step=4)
    with pytest.raises(ConfigError, match="must be 1 to 7"):
        demo_seeds(task, spec, 0, 1, starting_step=0)
