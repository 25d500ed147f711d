"""What to build from: video files, folders of videos, or a JSONL manifest.

A manifest line is an object with ``path`` (relative to the manifest's folder) and
optionally ``title`` (the task), ``task_id`` (a task of the library: its steps and
guideline are used), and ``transcript`` or ``manual`` (text used as the guideline as is,
instead of transcribing). A bad line is reported with its number and the rest still builds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".mpg", ".mpeg"})
TRUTH_SUFFIX = ".truth.json"  # ground truth beside a rendered demo video


def truth_path(video: Path) -> Path:
    """Where the ground truth of a rendered demo video lies: beside it, same stem."""
    return video.with_name(video.stem + TRUTH_SUFFIX)


MANIFEST_SUFFIXES = frozenset({".jsonl"})


@dataclass(frozen=True)
class VideoItem:
    path: Path
    title: str | None = None
    task_id: str | None = None
    guideline: str | None = None  # a transcript or manual given in the manifest

    @property
    def truth_path(self) -> Path:
        return truth_path(self.path)


@dataclass(frozen=True)
class InputProblem:
    where: str  # a path, or manifest path and line
    reason: str


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[VideoItem], list[InputProblem]]:
    """Expand inputs into videos, in a stable order; problems are returned, not raised."""
    items: list[VideoItem] = []
    problems: list[InputProblem] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                problems.append(InputProblem(str(path), "folder holds no video files"))
            items.extend(VideoItem(p) for p in found)
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            got, bad = read_manifest(path)
            items.extend(got)
            problems.extend(bad)
        elif path.is_file():
            items.append(VideoItem(path))
        else:
            problems.append(InputProblem(str(path), "no such file or folder"))
    return items, problems


def read_manifest(path: Path) -> tuple[list[VideoItem], list[InputProblem]]:
    items: list[VideoItem] = []
    problems: list[InputProblem] = []
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [InputProblem(str(path), f"cannot read manifest: {exc.strerror}")]
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(InputProblem(where, f"not UTF-8 text (byte {exc.start})"))
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problems.append(InputProblem(where, f"invalid JSON: {exc}"))
            continue
        item, reason = _item(obj, path.parent)
        if item is None:
            problems.append(InputProblem(where, reason))
        else:
            items.append(item)
    return items, problems


def _item(obj: object, base: Path) -> tuple[VideoItem | None, str]:
    if not isinstance(obj, dict):
        return None, "a manifest line must be a JSON object"
    unknown = set(obj) - {"path", "title", "task_id", "transcript", "manual"}
    if unknown:
        return None, f"unknown field(s): {', '.join(sorted(unknown))}"
    for key in ("path", "title", "task_id", "transcript", "manual"):
        if key in obj and not isinstance(obj[key], str):
            return None, f"field '{key}' must be a string"
    if not obj.get("path"):
        return None, "missing field 'path'"
    if obj.get("transcript") and obj.get("manual"):
        return None, "give either 'transcript' or 'manual', not both"
    path = Path(obj["path"])
    path = path if path.is_absolute() else base / path
    guideline = obj.get("transcript") or obj.get("manual") or None
    return VideoItem(path, obj.get("title"), obj.get("task_id"), guideline), ""
