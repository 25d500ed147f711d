"""Task context: the task's title, its ordered steps and its guideline text.

Tasks ship as YAML files under ``data/tasks`` (``id``, ``title``, ``steps``, ``guideline``,
optional ``source``). A malformed file fails with a message naming the file and field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rapidfuzz import fuzz

from lavia_live.contract.guidance import TASK_COMPLETE
from lavia_live.errors import TaskDefinitionError
from lavia_live.resources import shipped_path


@dataclass(frozen=True)
class TaskContext:
    """What the model is told about the task (the "guideline" of the original LaViA)."""

    id: str
    title: str
    steps: tuple[str, ...] = ()
    guideline: str = ""
    source: str = ""

    def step_number(self, text: str) -> int | None:
        """1-based number of the step whose text matches exactly (case/space-insensitive)."""
        key = normalise_step(text)
        for i, step in enumerate(self.steps, start=1):
            if normalise_step(step) == key:
                return i
        return None


def normalise_step(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


FUZZY_MIN = 85.0
"""Token-set similarity (0-100) at which an answer names a step it does not spell exactly."""
COMPLETE = "(complete)"
"""What :func:`match_step` returns for "the task is complete"."""


def match_step(text: str | None, steps: Sequence[str], *, fuzzy: bool = True) -> str | None:
    """The step (or :data:`COMPLETE`) an answer names; None when it names none of them.

    Exactly (case, spacing and a final period aside), else (unless ``fuzzy`` is False) the
    closest step by fuzzy token-set similarity of at least :data:`FUZZY_MIN`. The live step
    tracker matches answers fuzzily; evaluation holds a model to the exact step texts.
    """
    if text is None:
        return None
    key = normalise_step(text)
    if key == normalise_step(TASK_COMPLETE):
        return COMPLETE
    for step in steps:
        if normalise_step(step) == key:
            return step
    if not fuzzy:
        return None
    best = max(steps, key=lambda s: fuzz.token_set_ratio(normalise_step(s), key), default=None)
    if best is not None and fuzz.token_set_ratio(normalise_step(best), key) >= FUZZY_MIN:
        return best
    if fuzz.token_set_ratio(normalise_step(TASK_COMPLETE), key) >= FUZZY_MIN:
        return COMPLETE
    return None


class _TaskFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=80)
    title: str = Field(min_length=1, max_length=200)
    steps: list[str] = Field(min_length=1, max_length=100)
    guideline: str = ""
    source: str = ""

    @field_validator("steps")
    @classmethod
    def _steps_are_text(cls, steps: list[str]) -> list[str]:
        for i, step in enumerate(steps):
            if not step.strip():
                raise ValueError(f"step {i + 1} is empty")
        if len({normalise_step(s) for s in steps}) != len(steps):
            raise ValueError("two steps have the same text")
        return [s.strip() for s in steps]


def load_task(path: str | Path) -> TaskContext:
    """Read one task file; raise :class:`TaskDefinitionError` naming the file and field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TaskDefinitionError(f"{path}: cannot read task file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TaskDefinitionError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise TaskDefinitionError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskDefinitionError(f"{path}: a task file must be a mapping with id, title, steps")
    try:
        task = _TaskFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(file)"
        raise TaskDefinitionError(f"{path}: field '{field}': {err['msg']}") from exc
    return TaskContext(task.id, task.title, tuple(task.steps), task.guideline.strip(), task.source)


class TaskLibrary(Mapping[str, TaskContext]):
    """Tasks by id, loaded from a folder of ``*.yaml`` files."""

    def __init__(self, tasks: Mapping[str, TaskContext]) -> None:
        self._tasks = dict(tasks)

    @classmethod
    def load(cls, folder: str | Path | None = None) -> TaskLibrary:
        folder = Path(folder) if folder is not None else shipped_path("data/tasks")
        if not folder.is_dir():
            raise TaskDefinitionError(f"{folder}: task folder does not exist")
        tasks: dict[str, TaskContext] = {}
        origin: dict[str, Path] = {}
        for path in sorted(folder.glob("*.yaml")):
            task = load_task(path)
            if task.id in tasks:
                raise TaskDefinitionError(
                    f"{path}: field 'id': '{task.id}' is already defined in {origin[task.id]}"
                )
            tasks[task.id] = task
            origin[task.id] = path
        return cls(tasks)

    def __getitem__(self, task_id: str) -> TaskContext:
        return self._tasks[task_id]

    def require(self, task_id: str) -> TaskContext:
        """The task with this id, or a :class:`TaskDefinitionError` listing the known ones."""
        if task_id not in self._tasks:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise TaskDefinitionError(f"unknown task '{task_id}' (known: {known})")
        return self._tasks[task_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)
