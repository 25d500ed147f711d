"""The procedural demo task: timeline, ground truth, frames and the narrated mp4.

A demo video shows the seven steps of ``data/tasks/demo_oil_change.yaml`` in order, each
for a random duration; a share of the videos (``DemoSpec.mistake_rate``) has one mistake:
a skipped step (no oil pan), steps out of order (the drain plug loosened first) or a wrong
action (new oil poured with the drain plug out). Everything
comes from the seed: the same seed gives the same timeline, the same pixels and the same
narration. :func:`plan_demo` makes the timeline only; :func:`render_frame` draws any frame
of it (random access, see :mod:`training.demo.scene`); :func:`render_demo_video` writes the
H.264 mp4 with an AAC narration track (eSpeak NG) and the ground truth beside it.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import av
import numpy as np
import numpy.typing as npt

from lavia_live.atomic import atomic_open, atomic_write_json
from lavia_live.errors import ConfigError
from training.demo.scene import (
    CAP_OFF,
    CHECK_LEVEL,
    DRAIN,
    LOOSEN_PLUG,
    N_STEPS,
    PAN_IN,
    POUR,
    REFIT_PLUG,
    SceneConfig,
    SceneState,
    draw_scene,
)

__all__ = [
    "DEMO_TASK_ID",
    "DemoSpec",
    "DemoTruth",
    "StepSpan",
    "demo_seeds",
    "plan_demo",
    "render_demo_video",
    "render_frame",
]

logger = logging.getLogger(__name__)

DEMO_TASK_ID = "demo_oil_change"
AUDIO_RATE = 48_000
"""Sample rate of the AAC narration track."""

_STREAM_MISTAKE, _STREAM_DURATIONS, _STREAM_NARRATION = 101, 102, 103
_LINE_GAP_S = 0.25
_X264_OPTIONS = {"preset": "veryfast", "crf": "20"}
MISTAKE_KINDS = ("skipped_step", "out_of_order", "wrong_action")
"""What goes wrong in a demo video with a mistake, chosen with equal odds."""


@dataclass(frozen=True)
class _MistakePlan:
    """How one kind of mistake changes the step order, and while which steps it shows."""

    kind: str
    step: int  # the step the mistake is about
    order: tuple[int, ...]
    window: tuple[int, int]  # first and last step (inclusive, by order) whose spans warn
    text: str


_MISTAKES: dict[str, tuple[_MistakePlan, ...]] = {
    # No pan: the old oil will drain onto the floor (visible until draining ends).
    "skipped_step": (
        _MistakePlan(
            "skipped_step",
            PAN_IN,
            (CAP_OFF, LOOSEN_PLUG, DRAIN, REFIT_PLUG, POUR, CHECK_LEVEL),
            (CAP_OFF, DRAIN),
            "The oil pan is not under the engine; slide it under before draining the oil.",
        ),
    ),
    # The plug is loosened first: with no pan under it, or with the filler cap still on.
    "out_of_order": (
        _MistakePlan(
            "out_of_order",
            LOOSEN_PLUG,
            (LOOSEN_PLUG, PAN_IN, CAP_OFF, DRAIN, REFIT_PLUG, POUR, CHECK_LEVEL),
            (LOOSEN_PLUG, LOOSEN_PLUG),
            "The drain plug is being loosened before the oil pan is under the engine.",
        ),
        _MistakePlan(
            "out_of_order",
            LOOSEN_PLUG,
            (PAN_IN, LOOSEN_PLUG, CAP_OFF, DRAIN, REFIT_PLUG, POUR, CHECK_LEVEL),
            (LOOSEN_PLUG, LOOSEN_PLUG),
            "The drain plug is being loosened before the filler cap is off; unscrew the cap first.",
        ),
    ),
    # Refitting the plug is skipped: new oil poured with the drain plug out.
    "wrong_action": (
        _MistakePlan(
            "wrong_action",
            POUR,
            (PAN_IN, CAP_OFF, LOOSEN_PLUG, DRAIN, POUR, CHECK_LEVEL),
            (POUR, POUR),
            "New oil is poured while the drain plug is still out; refit and tighten the "
            "drain plug first.",
        ),
    ),
}
_CONNECTIVES = ("Next, ", "Now ", "Then ", "Now, ")


class DemoTask(Protocol):
    """What the renderer needs of a task (``lavia_live.contract.tasks.TaskContext``)."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def steps(self) -> tuple[str, ...]: ...
    @property
    def guideline(self) -> str: ...


@dataclass(frozen=True)
class DemoSpec:
    """Size, rate and variation of the rendered demo videos."""

    width: int = 320
    height: int = 240
    fps: int = 30
    min_step_s: float = 5.0
    max_step_s: float = 12.0
    mistake_rate: float = 0.25
    narration: bool = True
    max_shake_px: float = 3.0
    max_distractors: int = 3

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"width and height must be even and >= 64, got {self.width}x{self.height}"
            )
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if not 0 < self.min_step_s <= self.max_step_s:
            raise ValueError(
                f"need 0 < min_step_s <= max_step_s, got {self.min_step_s}, {self.max_step_s}"
            )
        if not 0.0 <= self.mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {self.mistake_rate}")
        if self.max_shake_px < 0 or self.max_distractors < 0:
            raise ValueError("max_shake_px and max_distractors must be >= 0")


@dataclass(frozen=True)
class StepSpan:
    """One stretch of the video during which one step is in progress."""

    step: int  # 0-based index into the task's steps
    start_frame: int
    end_frame: int  # exclusive


@dataclass(frozen=True)
class DemoTruth:
    """Ground truth of one demo video: the step spans, the mistake, the spoken lines."""

    video: str
    task_id: str
    seed: int
    fps: int
    n_frames: int
    spans: tuple[StepSpan, ...]  # in time order; a repeated step appears twice
    # {"kind": one of MISTAKE_KINDS, "step": i, "frame": f, "end_frame": e, "text": ...}:
    # the mistake shows (and the guidance warns) on frames f <= frame < e. Files written
    # before end_frame existed warn for the span holding ``frame``.
    mistakes: tuple[dict[str, object], ...]
    narration: tuple[dict[str, object], ...]  # {"start": s, "end": s, "text": ...}, seconds

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps

    def frame_at(self, seconds: float) -> int:
        """The frame shown ``seconds`` into the video (clamped to the video)."""
        return min(max(round(seconds * self.fps), 0), self.n_frames - 1)

    def span_index_at(self, frame: int) -> int:
        """Index into :attr:`spans` of the span that holds ``frame``."""
        if not 0 <= frame < self.n_frames:
            raise ValueError(f"frame {frame} is outside the video (0..{self.n_frames - 1})")
        starts = [span.start_frame for span in self.spans]
        return bisect.bisect_right(starts, frame) - 1

    def step_at(self, frame: int) -> int:
        """The step index in progress at ``frame``."""
        return self.spans[self.span_index_at(frame)].step

    def steps_to_do(self, frame: int) -> tuple[int, tuple[int, ...]]:
        """The step in progress at ``frame`` and the steps still to do, in the order a
        person should now do them: while a mistake shows, the steps it left undone before
        the current one come first (slide the pan under, refit the plug); the later steps
        follow in task order."""
        index = self.span_index_at(frame)
        current = self.spans[index].step
        done = {span.step for span in self.spans[:index]}
        todo = [s for s in range(N_STEPS) if s not in done and s != current]
        earlier = [s for s in todo if s < current]
        later = [s for s in todo if s > current]
        if self.mistake_at(frame) is not None:
            return current, (*earlier, *later)
        return current, (*later, *earlier)

    def skipped_before(self, frame: int) -> tuple[int, ...]:
        """Steps before the one in progress at ``frame`` that were never done."""
        index = self.span_index_at(frame)
        current = self.spans[index].step
        done = {span.step for span in self.spans[: index + 1]}
        return tuple(s for s in range(current) if s not in done)

    def mistake_windows(self) -> list[tuple[int, int, str]]:
        """(first frame, end frame exclusive, text) of each recorded mistake, in order."""
        windows = []
        for mistake in self.mistakes:
            start = min(max(int(str(mistake.get("frame", 0))), 0), self.n_frames - 1)
            end = mistake.get("end_frame")
            stop = self.spans[self.span_index_at(start)].end_frame if end is None else int(str(end))
            windows.append((start, stop, str(mistake.get("text") or "a mistake")))
        return windows

    def mistake_at(self, frame: int) -> str | None:
        """The text of the mistake showing at ``frame``, or None."""
        for start, end, text in self.mistake_windows():
            if start <= frame < end:
                return text
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "video": self.video,
            "task_id": self.task_id,
            "seed": self.seed,
            "fps": self.fps,
            "n_frames": self.n_frames,
            "spans": [
                {"step": s.step, "start_frame": s.start_frame, "end_frame": s.end_frame}
                for s in self.spans
            ],
            "mistakes": [dict(m) for m in self.mistakes],
            "narration": [dict(n) for n in self.narration],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DemoTruth:
        try:
            spans = tuple(
                StepSpan(int(s["step"]), int(s["start_frame"]), int(s["end_frame"]))
                for s in d["spans"]
            )
            return cls(
                video=str(d["video"]),
                task_id=str(d["task_id"]),
                seed=int(d["seed"]),
                fps=int(d["fps"]),
                n_frames=int(d["n_frames"]),
                spans=spans,
                mistakes=tuple(dict(m) for m in d["mistakes"]),
                narration=tuple(dict(n) for n in d["narration"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a demo truth record: {exc!r}") from exc


def _check_task(task: DemoTask) -> None:
    if task.id != DEMO_TASK_ID or len(task.steps) != N_STEPS:
        raise ValueError(
            f"the demo renderer draws {DEMO_TASK_ID!r} with {N_STEPS} steps, "
            f"got {task.id!r} with {len(task.steps)}"
        )


def _rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _timeline(
    task: DemoTask, seed: int, spec: DemoSpec
) -> tuple[tuple[StepSpan, ...], tuple[dict[str, object], ...], list[tuple[float, str]]]:
    """Spans, mistakes and narration cues (earliest start in seconds, text)."""
    rng = _rng(seed, _STREAM_MISTAKE)
    order: tuple[int, ...] = tuple(range(N_STEPS))
    plan: _MistakePlan | None = None
    if rng.random() < spec.mistake_rate:
        variants = _MISTAKES[MISTAKE_KINDS[int(rng.integers(len(MISTAKE_KINDS)))]]
        plan = variants[int(rng.integers(len(variants)))]
        order = plan.order
    seconds = _rng(seed, _STREAM_DURATIONS).uniform(spec.min_step_s, spec.max_step_s, len(order))
    spans, start = [], 0
    for step, s in zip(order, seconds, strict=True):
        end = start + max(1, round(float(s) * spec.fps))
        spans.append(StepSpan(step, start, end))
        start = end
    mistakes: list[dict[str, object]] = []
    if plan is not None:
        first, last = (next(s for s in spans if s.step == step) for step in plan.window)
        mistakes.append(
            {
                "kind": plan.kind,
                "step": plan.step,
                "frame": first.start_frame,
                "end_frame": last.end_frame,
                "text": plan.text,
            }
        )
    rng = _rng(seed, _STREAM_NARRATION)
    cues = []
    for i, span in enumerate(spans):
        connective = str(rng.choice(_CONNECTIVES))
        if i == 0:
            connective = "First, "
        offset = float(rng.uniform(0.2, 0.7))
        text = connective + _lower_first(task.steps[span.step])
        cues.append((span.start_frame / spec.fps + offset, text))
    return tuple(spans), tuple(mistakes), cues


class _Line(NamedTuple):
    start: float
    end: float
    text: str


def _place_lines(
    cues: Sequence[tuple[float, str]], durations: Sequence[float], total_s: float
) -> list[_Line]:
    """Start each line at its cue or after the previous one ends; cut at the video's end."""
    lines: list[_Line] = []
    free = 0.0
    for (earliest, text), duration in zip(cues, durations, strict=True):
        start = round(max(earliest, free), 3)
        if start >= total_s - 0.5:
            break
        lines.append(_Line(start, round(min(start + duration, total_s), 3), text))
        free = lines[-1].end + _LINE_GAP_S
    return lines


def _as_records(lines: Sequence[_Line]) -> tuple[dict[str, object], ...]:
    return tuple({"start": line.start, "end": line.end, "text": line.text} for line in lines)


def _estimated_speech_s(text: str) -> float:
    return 0.3 + 0.057 * len(text)  # eSpeak NG at 160 words per minute


def plan_demo(task: DemoTask, seed: int, spec: DemoSpec) -> DemoTruth:
    """The timeline of demo video ``seed``, without pixels or audio.

    Narration times here are estimated from the text length; :func:`render_demo_video`
    returns the same truth with the times of the speech it actually synthesised.
    """
    _check_task(task)
    spans, mistakes, cues = _timeline(task, seed, spec)
    n_frames = spans[-1].end_frame
    narration: tuple[dict[str, object], ...] = ()
    if spec.narration:
        durations = [_estimated_speech_s(text) for _, text in cues]
        narration = _as_records(_place_lines(cues, durations, n_frames / spec.fps))
    return DemoTruth(
        video=f"demo_{seed:05d}.mp4",
        task_id=task.id,
        seed=seed,
        fps=spec.fps,
        n_frames=n_frames,
        spans=spans,
        mistakes=mistakes,
        narration=narration,
    )


def demo_seeds(
    task: DemoTask, spec: DemoSpec, first: int, count: int, *, starting_step: int | None = None
) -> list[int]:
    """The seeds of ``count`` videos from ``first`` up: all of them, or (``starting_step``,
    1-based) only those whose person starts with that step, which takes a mistake for any
    step but the first (steps out of order, or the first skipped)."""
    if starting_step is None:
        return list(range(first, first + count))
    if not 1 <= starting_step <= len(task.steps):
        raise ConfigError(f"starting step must be 1 to {len(task.steps)}, got {starting_step}")
    candidates = range(first, first + 1000 * count)
    starting = (
        s for s in candidates if plan_demo(task, s, spec).spans[0].step == starting_step - 1
    )
    seeds = list(itertools.islice(starting, count))  # planned only until enough are found
    if len(seeds) < count:
        raise ConfigError(
            f"only {len(seeds)} of seeds {first}-{candidates[-1]} start with step "
            f"{starting_step} at mistake rate {spec.mistake_rate}"
        )
    return seeds


def render_frame(
    task: DemoTask, truth: DemoTruth, frame: int, seed: int, spec: DemoSpec
) -> npt.NDArray[np.uint8]:
    """Frame ``frame`` of the video: ``spec.height x spec.width x 3`` uint8 RGB.

    The truth decides what happens; the seed decides how it looks. Deterministic and random
    access: the same arguments give the same pixels, in any order.
    """
    _check_task(task)
    if truth.fps != spec.fps:
        raise ValueError(f"truth is at {truth.fps} fps but the spec says {spec.fps}")
    index = truth.span_index_at(frame)
    span = truth.spans[index]
    state = SceneState(
        done=frozenset(s.step for s in truth.spans[:index]),
        step=span.step,
        progress=(frame - span.start_frame) / (span.end_frame - span.start_frame),
        time_s=frame / spec.fps,
    )
    config = SceneConfig(spec.width, spec.height, spec.max_shake_px, spec.max_distractors)
    return draw_scene(seed, config, state)


def _narration_track(
    cues: Sequence[tuple[float, str]], total_s: float
) -> tuple[tuple[dict[str, object], ...], npt.NDArray[np.int16], int]:
    """Synthesise the cues, place them without overlaps and mix them into one mono track."""
    from lavia_live.speech.tts import synthesize  # eSpeak NG is needed only for narration

    speech = [synthesize(text) for _, text in cues]
    rate = speech[0].sample_rate if speech else AUDIO_RATE
    if any(s.sample_rate != rate for s in speech):
        raise ValueError("the synthesised lines have different sample rates")
    lines = _place_lines(cues, [s.duration_s for s in speech], total_s)
    track = np.zeros(round(total_s * rate), dtype=np.int32)
    for line, audio in zip(lines, speech, strict=False):  # lines past the end are dropped
        start = round(line.start * rate)
        pcm = audio.pcm[: max(0, track.shape[0] - start)]
        track[start : start + pcm.shape[0]] += pcm
    return _as_records(lines), np.clip(track, -32768, 32767).astype(np.int16), rate


class _AudioWriter:
    """Feeds a mono int16 track, chunk by chunk, through a resampler into an AAC stream."""

    def __init__(self, container: Any, pcm: npt.NDArray[np.int16], rate: int) -> None:
        self._container = container
        self._stream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        self._resampler = av.AudioResampler(
            format="fltp", layout="mono", rate=AUDIO_RATE, frame_size=1024
        )
        self._pcm, self._rate, self._pos = pcm, rate, 0

    def _encode(self, frames: Sequence[Any]) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)

    def write_until(self, seconds: float) -> None:
        end = min(self._pcm.shape[0], round(seconds * self._rate))
        self._write(end)

    def _write(self, end: int) -> None:
        if end <= self._pos:
            return
        frame = av.AudioFrame.from_ndarray(
            self._pcm[self._pos : end].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self._rate
        frame.pts = self._pos
        frame.time_base = Fraction(1, self._rate)
        self._encode(self._resampler.resample(frame))
        self._pos = end

    def close(self) -> None:
        self._write(self._pcm.shape[0])
        self._encode(self._resampler.resample(None))
        self._encode([None])


def _write_mp4(
    file: IO[bytes],
    task: DemoTask,
    truth: DemoTruth,
    spec: DemoSpec,
    track: tuple[npt.NDArray[np.int16], int] | None,
) -> None:
    """Encode every frame (H.264) and the narration (AAC), interleaved second by second."""
    with av.open(file, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=spec.fps, options=_X264_OPTIONS)
        video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
        audio = _AudioWriter(container, *track) if track is not None else None
        for index in range(truth.n_frames):
            pixels = render_frame(task, truth, index, truth.seed, spec)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
            if audio is not None and (index + 1) % spec.fps == 0:
                audio.write_until((index + 1) / spec.fps)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            audio.close()


def render_demo_video(
    task: DemoTask, seed: int, out_dir: Path, spec: DemoSpec | None = None
) -> DemoTruth:
    """Write ``demo_{seed:05d}.mp4`` (H.264, AAC narration) and ``demo_{seed:05d}.truth.json``.

    Both are written atomically, the truth last: a truth file on disk means its video is
    complete. The returned truth carries the times of the speech actually synthesised.
    """
    spec = spec or DemoSpec()
    started = time.perf_counter()
    truth = plan_demo(task, seed, spec)
    track: tuple[npt.NDArray[np.int16], int] | None = None
    if spec.narration:
        _, _, cues = _timeline(task, seed, spec)
        lines, pcm, rate = _narration_track(cues, truth.duration_s)
        truth = replace(truth, narration=lines)
        track = (pcm, rate)
    video_path = Path(out_dir) / truth.video
    with atomic_open(video_path, "wb") as file:
        _write_mp4(file, task, truth, spec, track)
    atomic_write_json(Path(out_dir) / f"demo_{seed:05d}.truth.json", truth.to_json())
    logger.info(
        "rendered %s: %d frames (%.1f s), %d spans, mistakes %s, in %.2f s",
        video_path,
        truth.n_frames,
        truth.duration_s,
        len(truth.spans),
        [m["kind"] for m in truth.mistakes] or "none",
        time.perf_counter() - started,
    )
    return truth
