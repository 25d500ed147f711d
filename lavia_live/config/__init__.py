"""Typed, layered configuration (see :mod:`.loader` and :mod:`.settings`)."""

from lavia_live.config.loader import Loaded, load_settings
from lavia_live.config.settings import Settings

__all__ = ["Loaded", "Settings", "load_settings"]
