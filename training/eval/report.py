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


def write_report(result: EvalResult, out: Path) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    t = result.totals
    summary = {"model": result.model, "data": result.data, **asdict(t), "failures": result.failures}
    atomic_write_json(out / "eval.json", summary)
    with atomic_open(out / "predictions.jsonl") as fh:
        for s in result.scores:
            fh.write(json.dumps(asdict(s)) + "\n")
    if t.confusion:
        write_confusion(t, out / "confusion.png")
    lines = [
        f"# Evaluation of `{result.model}`",
        "",
        f"Data: {', '.join(f'`{d}`' for d in result.data)} ({t.clips} clips)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| next-step accuracy | {_pct(t.next_step_accuracy)} |",
        f"| current-step accuracy | {_pct(t.current_step_accuracy)} |",
        f"| parse rate | {_pct(t.parse_rate)} |",
        f"| mistake precision | {_pct(t.mistake_precision)} |",
        f"| mistake recall | {_pct(t.mistake_recall)} ({t.mistakes_in_reference} in reference) |",
        f"| latency per clip (mean / p50 / p95) | {t.latency_mean_s:.3f} / {t.latency_p50_s:.3f} / "
        f"{t.latency_p95_s:.3f} s |",
        "",
    ]
    if t.confusion:
        lines += ["![current-step confusion](confusion.png)", ""]
    wrong = [s for s in result.scores if not (s.current_ok and s.next_ok)][:10]
    if wrong:
        lines += ["## Some misses", ""]
        lines += [f"- `{s.record_id}`: {s.answer.strip()[:200]!r}" for s in wrong]
    if result.failures:
        lines += ["", f"## Engine failures ({len(result.failures)})", ""]
        lines += [f"- {f}" for f in result.failures[:20]]
    with atomic_open(out / "report.md") as fh:
        fh.write("\n".join(lines) + "\n")
    return summary
