"""The outputs of ``lavia eval --live``: ``live.json`` (totals, per video, per step span),
``live.md`` (tables) and ``timeline_<video>.png`` per video (truth against what was said)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lavia_live.atomic import atomic_open, atomic_write_json
from lavia_live.contract.tasks import TaskContext
from training.eval.live import (
    ANNOUNCE_GRACE_S,
    WARNING_GRACE_S,
    LiveResult,
    LiveTotals,
    VideoScore,
    announcements,
    live_totals,
)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def timeline_name(video: str) -> str:
    return f"timeline_{Path(video).stem}.png"


def write_timeline(v: VideoScore, path: Path, task: TaskContext | None = None) -> None:
    """Truth step spans as bars on a step axis, the announced step as a line with markers,
    warnings as red markers, mistake windows (with their grace) shaded."""
    n_steps = len(task.steps) if task else 1 + max([s.step for s in v.spans], default=0)
    fig, ax = plt.subplots(figsize=(max(8.0, v.duration_s / 6), 1.2 + 0.45 * n_steps), dpi=100)
    try:
        for w in v.windows:
            ax.axvspan(w.start_s, w.end_s + WARNING_GRACE_S, color="tab:red", alpha=0.12, lw=0)
        for s in v.spans:
            ax.broken_barh(
                [(s.start_s, s.end_s - s.start_s)],
                (s.step - 0.3, 0.6),
                color="tab:blue",
                alpha=0.35,
            )
        said = [(e.t, e.current_index) for e in v.events if e.current_index is not None]
        if said:
            times = [t for t, _ in said] + [max(v.duration_s, said[-1][0])]
            steps = [i for _, i in said]
            ax.step(times, [*steps, steps[-1]], where="post", color="black", lw=1.2, label="said")
        changes = [
            (a.t, a.current_index) for a in announcements(v.events) if a.current_index is not None
        ]
        ax.plot(
            [t for t, _ in changes],
            [i for _, i in changes],
            "o",
            color="black",
            ms=4,
            label="announcement",
        )
        warned = [e for e in v.events if e.warning is not None]
        ax.plot(
            [e.t for e in warned],
            [n_steps - 0.5 if e.current_index is None else e.current_index for e in warned],
            "v",
            color="tab:red",
            ms=8,
            label="warning",
        )
        labels = [
            f"{i + 1}. {task.steps[i][:30]}" if task else f"step {i + 1}" for i in range(n_steps)
        ]
        ax.set_yticks(range(n_steps), labels, fontsize=7)
        ax.set_ylim(-0.7, n_steps - 0.3)
        ax.set_xlim(0, max(v.duration_s, max((e.t for e in v.events), default=0.0)) + 1)
        ax.set_xlabel("video time (s); bars: truth steps, shaded: mistake windows")
        ax.set_title(v.video, fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _totals_rows(t: LiveTotals) -> list[str]:
    return [
        "| metric | value |",
        "|---|---|",
        f"| steps announced in time | {t.announced}/{t.spans} ({_pct(t.announced_share)}) |",
        f"| step-change latency (median / p90) | {_num(t.latency_median_s)} / "
        f"{_num(t.latency_p90_s)} s |",
        f"| announcements per step | {_num(t.announcements_per_step)} |",
        f"| flaps (A, B, A) | {t.flaps} |",
        f"| mistakes warned on time | {t.mistakes_warned_on_time}/{t.mistakes} "
        f"({_pct(t.warned_on_time_share)}) |",
        f"| false warnings | {t.false_warnings} ({_num(t.false_warnings_per_10min, '.1f')} "
        "per 10 min) |",
        f"| false warnings on clean videos | {t.false_warnings_clean} "
        f"({_num(t.false_warnings_per_10min_clean, '.1f')} per 10 min over "
        f"{t.clean_videos} video{'' if t.clean_videos == 1 else 's'}) |",
        f"| engine errors | {t.engine_errors} |",
    ]


def write_live_report(
    result: LiveResult, out: Path, tasks: dict[str, TaskContext] | None = None
) -> dict[str, object]:
    """Write ``live.json``, ``live.md`` and the timelines to ``out``; returns ``live.json``."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = tasks or {}
    per_video = [(v, live_totals([v])) for v in result.videos]
    summary: dict[str, object] = {
        "model": result.model,
        "mode": "realtime" if result.realtime else "fast",
        **asdict(result.totals),
        "videos_detail": [
            {
                "video": v.video,
                "task_id": v.task_id,
                **asdict(t),
                "steps": [asdict(r) for r in v.steps],
                "mistakes": [asdict(m) for m in v.mistakes],
                "events": [asdict(e) for e in v.events],
            }
            for v, t in per_video
        ],
        "failures": result.failures,
    }
    atomic_write_json(out / "live.json", summary)
    for v in result.videos:
        write_timeline(v, out / timeline_name(v.video), tasks.get(v.task_id))
    t = result.totals
    mode = "real time" if result.realtime else "fast: every clip answered"
    lines = [
        f"# Live evaluation of `{result.model}`",
        "",
        f"{t.videos} video{'' if t.videos == 1 else 's'}, {t.duration_s / 60:.1f} min, "
        f"through the live loop ({mode}). "
        f"A step counts as announced when the assistant names it between the start of its "
        f"span and {ANNOUNCE_GRACE_S:g} s after its end; a warning is on time within "
        f"{WARNING_GRACE_S:g} s after the mistake.",
        "",
        *_totals_rows(t),
        "",
        "## Per video",
        "",
        "| video | steps announced | latency median | announcements/step | flaps | "
        "mistakes warned | false warnings |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, vt in per_video:
        lines.append(
            f"| {v.video} | {vt.announced}/{vt.spans} | {_num(vt.latency_median_s)} s | "
            f"{_num(vt.announcements_per_step)} | {vt.flaps} | "
            f"{vt.mistakes_warned_on_time}/{vt.mistakes} | {vt.false_warnings} |"
        )
    for v in result.videos:
        lines += ["", f"## {v.video}", "", f"![timeline]({timeline_name(v.video)})", ""]
        lines += [
            "| span | step | start | end | announced at | latency |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.span + 1} | {r.step + 1} | {r.start_s:.1f} | {r.end_s:.1f} | "
            f"{_num(r.announced_at, '.1f')} | {_num(r.latency_s)} |"
            for r in v.steps
        ]
        lines += [
            f"\nMistake `{m.kind}` (step {m.step + 1}) at {m.start_s:.1f}-{m.end_s:.1f} s: "
            + ("not warned" if m.warned_at is None else f"warned at {m.warned_at:.1f} s")
            for m in v.mistakes
        ]
    if result.failures:
        lines += ["", f"## Failures ({len(result.failures)})", ""]
        lines += [f"- {f}" for f in result.failures]
    with atomic_open(out / "live.md") as fh:
        fh.write("\n".join(lines) + "\n")
    return summary
