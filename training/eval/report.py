"""The evaluation's outputs: ``eval.json``, ``predictions.jsonl``, ``report.md`` and a
current-step confusion plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lavia_live.atomic import atomic_open, atomic_write_json
from training.eval.metrics import OTHER, UNPARSED, Totals
from training.eval.run import EvalResult


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def write_confusion(t: Totals, path: Path) -> None:
    rows = list(t.confusion)
    cols = rows + [c for c in (OTHER, UNPARSED) if c not in rows]
    matrix = [[t.confusion[r].get(c, 0) for c in cols] for r in rows]
    size = max(4.0, 0.6 * len(cols) + 2)
    fig, ax = plt.subplots(figsize=(size + 2, size), dpi=100)
    try:
        ax.imshow(matrix, cmap="Blues")
        short = [c if len(c) <= 28 else c[:26] + "…" for c in cols]
        ax.set_xticks(range(len(cols)), short, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), short[: len(rows)], fontsize=7)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted current step")
        ax.set_ylabel("true current step")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _guidance_lines(result: EvalResult) -> list[str]:
    t = result.totals
    if not t.clips:
        return ["No guidance records.", ""]
    lines = [
        "| metric | value |",
        "|---|---|",
        f"| next-step accuracy | {_pct(t.next_step_accuracy)} |",
        f"| current-step accuracy | {_pct(t.current_step_accuracy)} |",
        f"| answers naming a step outside the task | {t.steps_outside_task} |",
        f"| parse rate | {_pct(t.parse_rate)} |",
        f"| mistake precision | {_pct(t.mistake_precision)} |",
        f"| mistake recall | {_pct(t.mistake_recall)} ({t.mistakes_in_reference} in reference) |",
        f"| latency per clip (mean / p50 / p95) | {_seconds(t.latency_mean_s)} / "
        f"{_seconds(t.latency_p50_s)} / {_seconds(t.latency_p95_s)} s |",
        "",
        "An answer is right only if it names the task's steps exactly (case, spacing and a "
        "final period aside); one that names a step outside the task fails both fields.",
        "",
        "## By clip length",
        "",
        "| frames | clips | next-step | current-step |",
        "|---|---|---|---|",
    ]
    lines += _bucket_rows(t.by_clip_length)
    lines += [
        "",
        f"Worst next-step accuracy: {_pct(t.next_step_accuracy_worst_bucket)} "
        f"({t.next_step_worst_bucket or 'n/a'} frames).",
        "",
    ]
    if t.by_time_into_step:
        lines += [
            "## By time into the step",
            "",
            "From the start of the clip's current step (the demo video's ground truth) to "
            "the clip's last frame: just after a step change, only the last frames show "
            "the new step.",
            "",
            "| into the step | clips | next-step | current-step |",
            "|---|---|---|---|",
            *_bucket_rows(t.by_time_into_step),
            "",
        ]
    if t.confusion:
        lines += ["![current-step confusion](confusion.png)", ""]
    wrong = [s for s in result.scores if not (s.current_ok and s.next_ok)][:10]
    if wrong:
        lines += ["## Some misses", ""]
        lines += [
            f"- `{s.record_id}`{' (a step outside the task)' if s.outside_task else ''}: "
            f"{s.answer.strip()[:200]!r}"
            for s in wrong
        ]
        lines.append("")
    return lines


def _bucket_rows(rows: dict[str, dict[str, float | int | None]]) -> list[str]:
    out = []
    for name, row in rows.items():
        nxt, cur = row["next_step_accuracy"], row["current_step_accuracy"]
        out.append(
            f"| {name} | {row['clips']} | {_pct(None if nxt is None else float(nxt))} | "
            f"{_pct(None if cur is None else float(cur))} |"
        )
    return out


def _question_lines(result: EvalResult) -> list[str]:
    q = result.question_totals
    if not q.questions:
        return []
    unscored = q.questions_without_facts
    note = f" ({unscored} list no facts, not scored)" if unscored else ""
    lines = [
        "## Questions",
        "",
        f"{q.questions} questions; answered with every fact: {_pct(q.question_accuracy)}{note}.",
        "",
        "| kind | questions | all facts stated |",
        "|---|---|---|",
    ]
    lines += [
        f"| {kind} | {q.questions_by_kind[kind]} | {_pct(acc)} |"
        for kind, acc in q.question_accuracy_by_kind.items()
    ]
    failed = [s for s in result.questions if s.ok is False][:8]
    if failed:
        lines += ["", "### Some wrong answers", ""]
        lines += [
            f"- `{s.record_id}` ({s.kind}) {s.question!r}: missing {list(s.missing)}; "
            f"answered {s.answer[:200]!r}"
            for s in failed
        ]
    return [*lines, ""]


def write_report(result: EvalResult, out: Path) -> dict[str, object]:
    """Write ``eval.json``, ``predictions.jsonl``, ``report.md`` (and ``confusion.png``)
    to ``out``; returns what ``eval.json`` holds."""
    out.mkdir(parents=True, exist_ok=True)
    t = result.totals
    summary = {
        "model": result.model,
        "data": result.data,
        **asdict(t),
        **asdict(result.question_totals),
        "failures": result.failures,
    }
    atomic_write_json(out / "eval.json", summary)
    with atomic_open(out / "predictions.jsonl") as fh:
        for s in result.scores:
            fh.write(json.dumps({"type": "guidance", **asdict(s)}) + "\n")
        for q in result.questions:
            fh.write(json.dumps({"type": "question", **asdict(q)}) + "\n")
    if t.confusion:
        write_confusion(t, out / "confusion.png")
    data = ", ".join(f"`{d}`" for d in result.data)
    counts = f"{t.clips} clips" + (
        f", {result.question_totals.questions} questions" if result.questions else ""
    )
    lines = [f"# Evaluation of `{result.model}`", "", f"Data: {data} ({counts})", ""]
    lines += _guidance_lines(result)
    lines += _question_lines(result)
    if result.failures:
        lines += [f"## Engine failures ({len(result.failures)})", ""]
        lines += [f"- {f}" for f in result.failures[:20]]
    with atomic_open(out / "report.md") as fh:
        fh.write("\n".join(lines).rstrip("\n") + "\n")
    return summary
