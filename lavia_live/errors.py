"""One exception hierarchy for everything LaViA Live raises on purpose."""

from __future__ import annotations


class LaviaError(Exception):
    """Base class: every error the project raises deliberately derives from it."""


class ConfigError(LaviaError):
    """A configuration value or key is invalid; the message names the key and its source."""


class TaskDefinitionError(LaviaError):
    """A task file under ``data/tasks`` is malformed; the message names the file and field."""


class RecordError(LaviaError):
    """An instruction record cannot be read or does not satisfy the record schema."""


class ClipError(LaviaError):
    """A clip violates the contract (too many frames, frames out of order)."""


class MediaError(LaviaError):
    """A video or audio file or stream cannot be read or decoded; the message names it."""


class SpeechError(LaviaError):
    """Speech recognition or synthesis failed (model missing, engine error)."""
