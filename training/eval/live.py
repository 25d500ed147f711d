"""``lavia eval --live``: demo videos through the live pipeline, scored against their truth.

Each ``demo_*.mp4`` runs through :func:`lavia_live.watch.watch_source`, the loop ``lavia
watch`` runs (sampler, clip buffer, scheduler, engine, step tracker), and what the tracker
announces is compared with the video's ``demo_*.truth.json``. By default every clip is
answered without waiting for the clock (``lavia watch --fast``); a guidance event then
reaches the person at ``clip_end + latency``, the time it would arrive live. With
``realtime`` the video is paced at its own speed (clips are dropped while the model is
busy, as live) and an event's time is also no earlier than the video time it was sent at.

Per truth step span: *announced* when a guidance event names that step between the span's
start and :data:`ANNOUNCE_GRACE_S` after its end; the step-change latency is that event's
time minus the span's start. An *announcement* is a guidance event whose current step
differs from the previous event's; a *flap* is an announcement that returns to a step
announced and left before (A, B, A) where the truth does not return to it. A truth mistake
is *warned on time* when an event with a warning falls in its window (its first frame to
:data:`WARNING_GRACE_S` after its end); a warning outside every window is a false warning.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lavia_live.config.settings import Settings
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import Engine
from lavia_live.errors import LaviaError
from lavia_live.watch import watch_source
from training.data.manifest import truth_path
from training.demo.render import DemoTruth

log = logging.getLogger(__name__)

ANNOUNCE_GRACE_S = 3.0
WARNING_GRACE_S = 5.0


class LiveEvalError(LaviaError):
    """A video to evaluate live is missing, or its truth file is missing or malformed."""


@dataclass(frozen=True)
class Heard:
    """One guidance event, at the time it reaches the person."""

    t: float
    current_index: int | None
    warning: str | None

    @classmethod
    def of(cls, event: dict[str, Any], realtime: bool = False) -> Heard:
        arrives = float(event["clip_end"]) + float(event["latency_ms"]) / 1000
        if realtime:
            arrives = max(arrives, float(event["t"]))
        return cls(round(arrives, 3), event["current_index"], event["warning"])


@dataclass(frozen=True)
class Span:
    """A truth step span, in seconds."""

    step: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class MistakeWindow:
    kind: str
    step: int
    start_s: float
    end_s: float  # the mistake's end; warnings count until WARNING_GRACE_S after it
    text: str


def spans_of(truth: DemoTruth) -> list[Span]:
    return [Span(s.step, s.start_frame / truth.fps, s.end_frame / truth.fps) for s in truth.spans]


def mistake_windows(truth: DemoTruth) -> list[MistakeWindow]:
    """The truth's mistakes (:meth:`DemoTruth.mistake_windows`) in seconds."""
    out = []
    for (start, end, text), m in zip(truth.mistake_windows(), truth.mistakes, strict=True):
        kind, step = str(m.get("kind", "")), int(str(m.get("step", -1)))
        out.append(MistakeWindow(kind, step, start / truth.fps, end / truth.fps, text))
    return out


def announcements(events: Sequence[Heard]) -> list[Heard]:
    """The events whose current step differs from the previous event's (the first one too)."""
    out: list[Heard] = []
    for i, e in enumerate(events):
        if i == 0 or e.current_index != events[i - 1].current_index:
            out.append(e)
    return out


def count_flaps(
    announced: Sequence[Heard], spans: Sequence[Span] = (), grace_s: float = ANNOUNCE_GRACE_S
) -> int:
    """Announcements returning to a step announced and left before (A, B, A), unless the
    truth itself returns to that step then (a span of it that is not its first)."""
    repeats = [s for i, s in enumerate(spans) if any(p.step == s.step for p in spans[:i])]
    left: set[int] = set()
    previous: int | None = None
    flaps = 0
    for a in announced:
        if a.current_index is None or a.current_index == previous:
            continue
        if a.current_index in left and not any(
            r.step == a.current_index and r.start_s <= a.t <= r.end_s + grace_s for r in repeats
        ):
            flaps += 1
        if previous is not None:
            left.add(previous)
        previous = a.current_index
    return flaps


@dataclass(frozen=True)
class StepRow:
    span: int  # index into the truth's spans
    step: int
    start_s: float
    end_s: float
    announced_at: float | None  # the earliest event naming the step in its window
    latency_s: float | None


def step_rows(
    spans: Sequence[Span], events: Sequence[Heard], grace_s: float = ANNOUNCE_GRACE_S
) -> list[StepRow]:
    rows = []
    for i, s in enumerate(spans):
        times = [
            e.t
            for e in events
            if e.current_index == s.step and s.start_s <= e.t <= s.end_s + grace_s
        ]
        at = min(times, default=None)
        latency = None if at is None else round(at - s.start_s, 3)
        rows.append(StepRow(i, s.step, s.start_s, s.end_s, at, latency))
    return rows


@dataclass(frozen=True)
class MistakeRow:
    kind: str
    step: int
    start_s: float
    end_s: float
    warned_at: float | None  # the earliest warning in the window


def _in_window(t: float, w: MistakeWindow, grace_s: float) -> bool:
    return w.start_s <= t <= w.end_s + grace_s


def mistake_rows(
    windows: Sequence[MistakeWindow], events: Sequence[Heard], grace_s: float = WARNING_GRACE_S
) -> list[MistakeRow]:
    warned = [e for e in events if e.warning is not None]
    return [
        MistakeRow(
            w.kind,
            w.step,
            w.start_s,
            w.end_s,
            min((e.t for e in warned if _in_window(e.t, w, grace_s)), default=None),
        )
        for w in windows
    ]


def false_warnings(
    windows: Sequence[MistakeWindow], events: Sequence[Heard], grace_s: float = WARNING_GRACE_S
) -> int:
    """Warning events outside every mistake's window."""
    return sum(
        e.warning is not None and not any(_in_window(e.t, w, grace_s) for w in windows)
        for e in events
    )


@dataclass
class VideoScore:
    video: str
    task_id: str
    duration_s: float
    events: list[Heard]
    spans: list[Span]
    windows: list[MistakeWindow]
    steps: list[StepRow]
    mistakes: list[MistakeRow]
    announcements: int
    flaps: int
    warnings: int
    false_warnings: int
    engine_errors: int = 0  # error events the live loop sent (engine timeouts, failures)


def score_video(
    video: str, truth: DemoTruth, events: Sequence[Heard], engine_errors: int = 0
) -> VideoScore:
    spans, windows = spans_of(truth), mistake_windows(truth)
    announced = announcements(events)
    return VideoScore(
        video=video,
        task_id=truth.task_id,
        duration_s=truth.duration_s,
        events=list(events),
        spans=spans,
        windows=windows,
        steps=step_rows(spans, events),
        mistakes=mistake_rows(windows, events),
        announcements=len(announced),
        flaps=count_flaps(announced, spans),
        warnings=sum(e.warning is not None for e in events),
        false_warnings=false_warnings(windows, events),
        engine_errors=engine_errors,
    )


def _p90(ordered: Sequence[float]) -> float | None:
    """The 90th percentile by nearest rank of an ascending list."""
    return ordered[math.ceil(0.9 * len(ordered)) - 1] if ordered else None


def _per_10min(count: int, seconds: float) -> float | None:
    return count / (seconds / 600) if seconds > 0 else None


@dataclass
class LiveTotals:
    videos: int = 0
    duration_s: float = 0.0
    spans: int = 0
    announced: int = 0
    announced_share: float | None = None
    latency_median_s: float | None = None
    latency_p90_s: float | None = None
    announcements: int = 0
    announcements_per_step: float | None = None
    flaps: int = 0
    mistakes: int = 0
    mistakes_warned_on_time: int = 0
    warned_on_time_share: float | None = None
    warnings: int = 0
    false_warnings: int = 0
    false_warnings_per_10min: float | None = None
    clean_videos: int = 0  # videos without a mistake
    false_warnings_clean: int = 0
    false_warnings_per_10min_clean: float | None = None
    engine_errors: int = 0


def live_totals(videos: Sequence[VideoScore]) -> LiveTotals:
    rows = [r for v in videos for r in v.steps]
    latencies = sorted(r.latency_s for r in rows if r.latency_s is not None)
    mistakes = [m for v in videos for m in v.mistakes]
    clean = [v for v in videos if not v.mistakes]
    duration = sum(v.duration_s for v in videos)
    announced_n = sum(v.announcements for v in videos)
    false_n = sum(v.false_warnings for v in videos)
    false_clean = sum(v.false_warnings for v in clean)
    warned = sum(m.warned_at is not None for m in mistakes)
    return LiveTotals(
        videos=len(videos),
        duration_s=round(duration, 3),
        spans=len(rows),
        announced=len(latencies),
        announced_share=len(latencies) / len(rows) if rows else None,
        latency_median_s=statistics.median(latencies) if latencies else None,
        latency_p90_s=_p90(latencies),
        announcements=announced_n,
        announcements_per_step=announced_n / len(rows) if rows else None,
        flaps=sum(v.flaps for v in videos),
        mistakes=len(mistakes),
        mistakes_warned_on_time=warned,
        warned_on_time_share=warned / len(mistakes) if mistakes else None,
        warnings=sum(v.warnings for v in videos),
        false_warnings=false_n,
        false_warnings_per_10min=_per_10min(false_n, duration),
        clean_videos=len(clean),
        false_warnings_clean=false_clean,
        false_warnings_per_10min_clean=_per_10min(false_clean, sum(v.duration_s for v in clean)),
        engine_errors=sum(v.engine_errors for v in videos),
    )


@dataclass
class LiveResult:
    model: str
    realtime: bool
    videos: list[VideoScore]
    totals: LiveTotals
    failures: list[str] = field(default_factory=list)


def find_videos(paths: Sequence[str | Path]) -> list[tuple[Path, DemoTruth]]:
    """``demo_*.mp4`` files (given, or in given folders) with the truth beside each."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.glob("demo_*.mp4"))
        elif p.is_file():
            found.append(p)
        else:
            raise LiveEvalError(f"{p}: no such video file or folder")
    if not found:
        raise LiveEvalError(f"no demo_*.mp4 videos in {', '.join(map(str, paths))}")
    out = []
    for video in found:
        path = truth_path(video)
        try:
            truth = DemoTruth.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise LiveEvalError(f"{video}: no truth file {path.name} beside it") from exc
        except (OSError, ValueError) as exc:
            raise LiveEvalError(f"{path}: cannot read the truth: {exc}") from exc
        out.append((video, truth))
    return out


async def _watch(
    video: Path, truth: DemoTruth, engine: Engine, library: TaskLibrary, **watch: Any
) -> VideoScore:
    heard: list[Heard] = []
    errors: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "guidance":
            heard.append(Heard.of(event, watch["realtime"]))
        elif event.get("type") == "error":
            errors.append(f"{event.get('code')}: {event.get('message')}")

    task = library.require(truth.task_id)
    await watch_source(str(video), task=task, engine=engine, on_event=on_event, **watch)
    for error in errors[:3]:
        log.warning("%s: the live loop reported %s", video, error)
    return score_video(video.name, truth, heard, len(errors))


async def evaluate_live(
    engine: Engine,
    videos: Sequence[str | Path],
    *,
    library: TaskLibrary,
    settings: Settings,
    frame_max_side: int,
    realtime: bool = False,
    progress: bool | None = None,
) -> LiveResult:
    """Run every video through the live loop with ``engine`` and score what it announced;
    a video that cannot be decoded is a failure, the others still count. Closes ``engine``."""
    found = find_videos(videos)
    watch = {"settings": settings, "frame_max_side": frame_max_side, "realtime": realtime}
    scores: list[VideoScore] = []
    failures: list[str] = []
    bar = tqdm(
        found, desc="live eval", unit="video", disable=None if progress is None else not progress
    )
    try:
        for video, truth in bar:
            try:
                score = await _watch(video, truth, engine, library, fast=not realtime, **watch)
            except LaviaError as exc:
                failures.append(f"{video}: {exc}")
                log.warning("live eval of %s failed: %s", video, exc)
                continue
            scores.append(score)
            t = live_totals([score])
            log.info(
                "%s: %d/%d steps announced, %d announcements, %d flaps, %d false warnings",
                video.name, t.announced, t.spans, t.announcements, t.flaps, t.false_warnings,
            )  # fmt: skip
    finally:
        bar.close()
        await engine.aclose()
    if not scores:
        raise LiveEvalError("no video could be evaluated: " + "; ".join(failures))
    return LiveResult(engine.name, realtime, scores, live_totals(scores), failures)
