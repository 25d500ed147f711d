"""The build's output folder: every result keyed by content and written atomically.

::

    OUT/records.jsonl                 the dataset (assembled from records/ at the end)
    OUT/card.md, OUT/card.json        the dataset card
    OUT/frames/<video>/<n>.jpg        the n-th sampled frame of a video
    OUT/work/videos/<video>.json      per-video stage result: clips and any decode error
    OUT/work/transcripts/<key>.json   transcripts, keyed by video content + options
    OUT/work/annotations/<key>.json   successful annotations, keyed by annotator + prompt
                                      + frame bytes: a restarted build never pays twice
    OUT/work/records/<video>/<clip>.json  one record per clip

``<video>`` is the SHA-256 of the file's bytes, so a renamed or re-listed video is
recognised, and a killed build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lavia_live.atomic import atomic_write_json


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_key(*parts: object) -> str:
    """A stable key for JSON-serialisable parts (bytes are hashed first)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            part = hashlib.sha256(part).hexdigest()
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:40]


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (then: redo the work)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class BuildStore:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.work = out / "work"

    @property
    def records_path(self) -> Path:
        return self.out / "records.jsonl"

    def frame_path(self, video: str, sample: int) -> Path:
        """The ``sample``-th kept frame of a video (overlapping clips share the file)."""
        return self.out / "frames" / video[:16] / f"{sample:05d}.jpg"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def video_path(self, video: str) -> Path:
        return self.work / "videos" / f"{video}.json"

    def transcript_path(self, key: str) -> Path:
        return self.work / "transcripts" / f"{key}.json"

    def annotation_path(self, key: str) -> Path:
        return self.work / "annotations" / f"{key}.json"

    def record_path(self, video: str, clip: int) -> Path:
        return self.work / "records" / video[:16] / f"{clip:04d}.json"

    def write(self, path: Path, obj: Any) -> None:
        atomic_write_json(path, obj)
