"""The guidance answer: current step, next step, optional warning — and its parser.

Canonical text (what training targets contain and what the prompt asks for)::

    Current step: Loosen the drain plug with the ratchet.
    Next step: Drain the old oil into the pan.
    Warning: none

:func:`parse_guidance` never raises. It also accepts a JSON object (structured output from
an annotator), markdown decoration, other casing and common key variants; when it finds
neither step it returns status ``"unparsed"`` with the raw text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

TASK_COMPLETE = "The task is complete."
NO_WARNING = "none"

# Answers to questions are free text; where one names a step of the task, the step's text
# follows one of these labels ("You are on: Loosen the drain plug with the ratchet. It is
# step 3 of 7.", "Next: Drain the old oil into the pan."). The demo data's answers write
# them and in-process engines hold what follows them to the task's steps.
CURRENT_LABEL = "You are on:"
NEXT_LABEL = "Next:"  # a step, or TASK_COMPLETE
LEFT_LABEL = "Steps left after:"
TOOL_LABEL = "Needed for:"
HOW_LABEL = "Do this now:"  # how to go on: the step at hand, then what it needs
SKIPPED_LABEL = "skipped:"
STEP_LABELS = (CURRENT_LABEL, LEFT_LABEL, TOOL_LABEL, HOW_LABEL, SKIPPED_LABEL)  # before a step

Status = Literal["ok", "partial", "unparsed"]

# JSON schema for structured-output annotators (OpenAI ``response_format``).
GUIDANCE_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "current_step": {"type": "string"},
        "next_step": {"type": "string"},
        "warning": {"type": ["string", "null"]},
    },
    "required": ["current_step", "next_step", "warning"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Guidance:
    current_step: str
    next_step: str
    warning: str | None = None

    def to_text(self) -> str:
        """The canonical answer text."""
        return (
            f"Current step: {_one_line(self.current_step)}\n"
            f"Next step: {_one_line(self.next_step)}\n"
            f"Warning: {_one_line(self.warning) if self.warning else NO_WARNING}"
        )

    def to_json(self) -> dict[str, str | None]:
        return {
            "current_step": self.current_step,
            "next_step": self.next_step,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class ParsedGuidance:
    """What the parser made of a model answer; ``raw`` is always the input text."""

    status: Status
    raw: str
    current_step: str | None = None
    next_step: str | None = None
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def guidance(self) -> Guidance | None:
        if self.current_step is None or self.next_step is None:
            return None
        return Guidance(self.current_step, self.next_step, self.warning)


_KEYS: dict[str, str] = {
    "current step": "current_step",
    "current_step": "current_step",
    "current": "current_step",
    "now": "current_step",
    "step now": "current_step",
    "next step": "next_step",
    "next_step": "next_step",
    "next": "next_step",
    "warning": "warning",
    "warnings": "warning",
    "mistake": "warning",
    "mistakes": "warning",
}
_LINE = re.compile(
    r"^[\s>*#\-\d.)]*(?:\*\*|__)?\s*("
    + "|".join(sorted(map(re.escape, _KEYS), key=len)[::-1])
    + r")\s*(?:\*\*|__)?\s*[:=\-\u2013]\s*(?:\*\*|__)?\s*(.*)$",
    re.IGNORECASE,
)
_NONE_WORDS = {"", "none", "no", "n/a", "na", "null", "-", "nothing", "no warning", "no mistake"}
_MAX_FIELD = 500


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _clean(value: object) -> str | None:
    if value is None:
        return None
    text = _one_line(str(value)).strip("*_`\"' ")
    return text[:_MAX_FIELD] if text else None


def _warning(value: object) -> str | None:
    text = _clean(value)
    if text is None or text.lower().rstrip(".!") in _NONE_WORDS:
        return None
    return text


def _from_json(text: str) -> dict[str, object] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    fields: dict[str, object] = {}
    for key, value in obj.items():
        name = _KEYS.get(str(key).strip().lower().replace("-", " "))
        if name is not None and name not in fields:
            fields[name] = value
    return fields or None


def _from_lines(text: str) -> dict[str, object]:
    fields: dict[str, object] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        name = _KEYS[match.group(1).lower()]
        if name not in fields:
            fields[name] = match.group(2)
    return fields


def parse_guidance(text: object) -> ParsedGuidance:
    """Parse a model answer into guidance. Never raises, whatever ``text`` is."""
    raw = text if isinstance(text, str) else ("" if text is None else repr(text))
    fields = _from_json(raw) or _from_lines(raw)
    current = _clean(fields.get("current_step"))
    nxt = _clean(fields.get("next_step"))
    warning = _warning(fields.get("warning"))
    if current is None and nxt is None:
        return ParsedGuidance("unparsed", raw)
    status: Status = "ok" if current is not None and nxt is not None else "partial"
    return ParsedGuidance(status, raw, current, nxt, warning)
