"""The instruction record: LLaVA/ShareGPT video format plus LaViA Live metadata.

The fields ``id``, ``image`` (frame paths, oldest first) and ``conversations`` (``from`` /
``value`` turns, one ``<image>`` per frame in order) are what the original LaViA emits and
LLaVA-style trainers read. The rest is metadata, optional so that the original project's
records load too: source video, clip span and frame timestamps, the transcript span, the
structured annotation, annotator model and prompt version.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lavia_live.atomic import atomic_open
from lavia_live.contract.prompt import IMAGE_TAG, Prompt
from lavia_live.errors import RecordError


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    speaker: Literal["human", "gpt", "system"] = Field(alias="from")
    value: str


class Annotation(BaseModel):
    """The structured answer behind the record's ``gpt`` turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    current_step: str
    next_step: str
    warning: str | None = None


class QuestionInfo(BaseModel):
    """What a question record asks and the facts a correct answer states.

    ``facts`` are short texts (a step's text, a count such as ``"3"``, a tool name) that
    must all appear in the answer, case and spacing aside; ``kind`` groups the scores.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(min_length=1)
    question: str = Field(min_length=1)
    facts: list[str] = Field(default_factory=list)


class InstructionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    image: list[str]
    conversations: list[Turn] = Field(min_length=2)
    # metadata (absent from the original project's records)
    task_id: str | None = None
    source_video: str | None = None
    clip_index: int | None = None
    clip_start: float | None = None
    clip_end: float | None = None
    frame_timestamps: list[float] | None = None
    transcript_span: str | None = None
    annotation: Annotation | None = None  # guidance records
    question: QuestionInfo | None = None  # question records (the human turn asks it)
    annotator: str | None = None
    prompt_version: str | None = None

    @model_validator(mode="after")
    def _check_images(self) -> InstructionRecord:
        tags = sum(t.value.count(IMAGE_TAG) for t in self.conversations if t.speaker == "human")
        if tags != len(self.image):
            raise ValueError(f"{len(self.image)} frames but {tags} {IMAGE_TAG} tags")
        if self.annotation is not None and self.question is not None:
            raise ValueError("a record is a guidance record or a question record, not both")
        if self.frame_timestamps is not None:
            if len(self.frame_timestamps) != len(self.image):
                raise ValueError("frame_timestamps and image differ in length")
            ts = self.frame_timestamps
            if any(b <= a for a, b in itertools.pairwise(ts)):
                raise ValueError("frame_timestamps must increase (oldest first)")
        return self

    @property
    def prompt_text(self) -> str:
        return next(t.value for t in self.conversations if t.speaker == "human")

    @property
    def answer_text(self) -> str:
        return next(t.value for t in self.conversations if t.speaker == "gpt")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_llava(self) -> dict[str, Any]:
        """Only the fields the original LaViA training code reads."""
        return {k: v for k, v in self.to_json().items() if k in ("id", "image", "conversations")}

    @classmethod
    def from_prompt(
        cls, record_id: str, frames: list[str], prompt: Prompt, answer: str, **meta: Any
    ) -> InstructionRecord:
        """A record whose human turn is the prompt builder's text, so training sees it."""
        turns = [
            Turn.model_validate({"from": "human", "value": prompt.llava_text()}),
            Turn.model_validate({"from": "gpt", "value": answer}),
        ]
        return cls(
            id=record_id, image=frames, conversations=turns, prompt_version=prompt.version, **meta
        )


def _validate(obj: object, where: str) -> InstructionRecord:
    try:
        return InstructionRecord.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(record)"
        raise RecordError(f"{where}: field '{field}': {err['msg']}") from exc


def iter_records(path: str | Path) -> Iterator[InstructionRecord]:
    """Records from a ``.jsonl`` file (one per line) or a ``.json`` file (object or list)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordError(f"{path}: invalid JSON: {exc}") from exc
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            yield _validate(item, f"{path} record {i}")
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise RecordError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
        yield _validate(item, f"{path}:{lineno}")


def read_records(path: str | Path) -> list[InstructionRecord]:
    return list(iter_records(path))


def write_jsonl(path: str | Path, records: Iterable[InstructionRecord]) -> int:
    """Write records atomically (a temporary file renamed into place); returns the count."""
    count = 0
    with atomic_open(path) as fh:
        for record in records:
            fh.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count
