"""Where the files that ship with the project live (task definitions, default configs).

In a source checkout (or an editable install) they are the repository's ``data/`` and
``configs/``; a wheel carries copies under ``lavia_live/_shipped/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_path(relative: str) -> Path:
    """Path of a shipped file or folder such as ``data/tasks`` or ``configs/lavia.yaml``."""
    for root in (_PACKAGE / "_shipped", _PACKAGE.parent):
        candidate = root / relative
        if candidate.exists():
            return candidate
    return _PACKAGE.parent / relative
