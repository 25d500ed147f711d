"""What every client of an OpenAI-compatible server here shares (GPT-4o, SGLang, vLLM):
the API key lookup, frames as data URLs and one-line descriptions of failed requests.

Retrying is the ``openai`` SDK's job: every client is made with ``max_retries`` and the SDK
retries 408, 409, 429, 5xx, connection errors and timeouts with jittered exponential
backoff, waiting what ``retry-after-ms``/``Retry-After`` asks instead when the server says.
Used by the dataset build's annotator and transcriber, the live engine and OpenAI TTS.
"""

from __future__ import annotations

import base64
import os

import openai

NO_KEY = "EMPTY"  # sent as the bearer token when no key is needed (local servers ignore it)


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


def error_message(exc: openai.APIStatusError) -> str:
    """The server's own message from an OpenAI-style error body, else the client's."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return exc.message


def describe_error(exc: openai.APIError, timeout_s: float) -> str:
    """A failed request in one line, once the SDK has given up on it: ``HTTP 503: <the
    server's message> (after 2 retries)``, ``timeout: nothing received within 30 s``,
    ``connection error: ...`` or ``malformed response: ...``."""
    if isinstance(exc, openai.APIStatusError):
        reason = f"HTTP {exc.status_code}: {error_message(exc)}"
    elif isinstance(exc, openai.APITimeoutError):
        reason = f"timeout: nothing received within {timeout_s:g} s"
    elif isinstance(exc, openai.APIConnectionError):
        reason = f"connection error: {exc.__cause__ or exc.message}"
    else:  # APIResponseValidationError and kin: an answer that is not what was asked for
        reason = f"malformed response: {exc.message}"
    # The SDK numbers each request it sends in this header (0 for the first).
    retries = exc.request.headers.get("x-stainless-retry-count", "0")
    if retries.isdigit() and int(retries) > 0:
        reason += f" (after {retries} {'retry' if retries == '1' else 'retries'})"
    return reason


def jpeg_data_url(jpeg: bytes) -> str:
    """A frame as an image part's URL, as every OpenAI-compatible server accepts it."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
