"""The dataset card: what a build holds, what it cost, and every failure with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lavia_live.atomic import atomic_open, atomic_write_json
from lavia_live.contract.prompt import PROMPT_VERSION

if TYPE_CHECKING:
    from training.config import PipelineSettings
    from training.data.build import BuildReport


def card_json(report: BuildReport, settings: PipelineSettings) -> dict[str, Any]:
    return {
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "records": report.records,
        "videos": {"given": report.videos_in, "complete": report.videos_done},
        "clips": report.clips,
        "hours": round(report.seconds / 3600, 4),
        "annotator": report.annotator,
        "prompt_version": PROMPT_VERSION,
        "tokens": {"prompt": report.prompt_tokens, "completion": report.completion_tokens},
        "cost_usd": {
            "annotation": round(report.annotation_usd, 6),
            "transcription": round(report.transcription_usd, 6),
        },
        "failures": [asdict(f) for f in report.failures],
        "notes": [asdict(n) for n in report.notes],
        "config": settings.model_dump(mode="json"),
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        "# Dataset card",
        "",
        f"Built {card['built_at']} with prompt version `{card['prompt_version']}`, "
        f"annotator `{card['annotator']}`. Records: `records.jsonl` (LLaVA/ShareGPT video "
        "format with LaViA Live metadata); frames: `frames/`.",
        "",
        "| | |",
        "|---|---|",
        f"| records | {card['records']} |",
        f"| videos given / complete | {card['videos']['given']} / {card['videos']['complete']} |",
        f"| clips | {card['clips']} |",
        f"| hours of video | {card['hours']:.3f} |",
        f"| tokens (prompt / completion) this run | {card['tokens']['prompt']} / "
        f"{card['tokens']['completion']} |",
        f"| cost this run (annotation / transcription) | ${card['cost_usd']['annotation']:.4f} / "
        f"${card['cost_usd']['transcription']:.4f} |",
        "",
        f"## Failures ({len(card['failures'])})",
        "",
    ]
    if card["failures"]:
        lines += ["| where | stage | reason |", "|---|---|---|"]
        lines += [
            f"| {f['where']} | {f['stage']} | {_cell(f['reason'])} |" for f in card["failures"]
        ]
    else:
        lines.append("None.")
    if card["notes"]:
        lines += ["", f"## Notes ({len(card['notes'])})", ""]
        lines += [f"- {n['where']}: {n['reason']}" for n in card["notes"]]
    lines += ["", "## Configuration", "", "```json", json.dumps(card["config"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_card(report: BuildReport, settings: PipelineSettings) -> dict[str, Any]:
    card = card_json(report, settings)
    atomic_write_json(report.out / "card.json", card)
    with atomic_open(report.out / "card.md") as fh:
        fh.write(card_markdown(card))
    return card
