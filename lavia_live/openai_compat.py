"""What every client of an OpenAI-compatible server here shares (GPT-4o, SGLang, vLLM):
the API key lookup, which failures to retry, Retry-After, backoff and error messages.

Used by the dataset build's annotator and transcriber and by the live engine.
"""

from __future__ import annotations

import base64
import email.utils
import os
import random
import time
from typing import Any

import openai

NO_KEY = "EMPTY"  # sent as the bearer token when no key is needed (local servers ignore it)
_RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx


class MissingAPIKey(ValueError):
    """The environment variable that should hold the API key is unset or empty."""


def api_key_from_env(env_name: str, base_url: str | None) -> str:
    """The key in ``env_name``; ``NO_KEY`` when ``env_name`` is empty (a local server)."""
    if not env_name:
        return NO_KEY
    key = os.environ.get(env_name, "")
    if not key:
        raise MissingAPIKey(
            f"environment variable {env_name} is not set: it must hold the API key for "
            f"{base_url or 'the OpenAI API'} (use api_key_env='' for a local server that "
            "needs no key)"
        )
    return key


def is_retryable_status(status: int) -> bool:
    return status in _RETRY_STATUSES or status >= 500


def error_message(exc: openai.APIStatusError) -> str:
    """The server's own message from an OpenAI-style error body, else the client's."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return exc.message


def retry_after_s(headers: Any) -> float:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date); 0 if none."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def jpeg_data_url(jpeg: bytes) -> str:
    """A frame as an image part's URL, as every OpenAI-compatible server accepts it."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def backoff_s(attempt: int, base_s: float, cap_s: float, server_delay_s: float = 0.0) -> float:
    """Exponential backoff with jitter for retry ``attempt`` (1-based), at least the
    server's Retry-After, never more than ``cap_s``."""
    base = base_s * 2.0 ** (attempt - 1)
    return min(max(base * (0.5 + random.random() / 2), server_delay_s), cap_s)
