"""``/v1/chat/completions`` as ``lavia model-server`` speaks it: a request read into the
contract's prompt (:func:`~lavia_live.contract.prompt.prompt_from_openai_messages`), its
frames and generation options; OpenAI-shaped errors; the ``chat.completion`` object and the
``chat.completion.chunk`` events of a stream, as OpenAI writes them.

Images arrive as data URLs (``data:image/jpeg;base64,...``; PNG and the other formats
Pillow reads are re-encoded as JPEG, the form every engine takes). The server fetches
nothing: an ``http(s)`` image URL is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lavia_live.contract.prompt import Prompt, prompt_from_openai_messages
from lavia_live.engines.base import GenerationOptions
from lavia_live.errors import LaviaError

JPEG_QUALITY = 95  # a frame that arrives in another format is re-encoded at this quality
_JPEG_MAGIC = b"\xff\xd8\xff"
# Request fields that would change the answer in a way this server cannot honour.
_UNSUPPORTED = ("stop", "tools", "functions", "logprobs", "top_logprobs", "logit_bias")


class ChatAPIError(LaviaError):
    """A request answered with an OpenAI-shaped error: ``{"error": {message, type, param,
    code}}`` and ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class _Wire(BaseModel):
    # OpenAI clients send many optional fields (user, seed, top_p, metadata, ...): the ones
    # that do not change what this server can answer are accepted and ignored.
    model_config = ConfigDict(extra="allow", frozen=True)


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None  # a string or a list of parts: read by prompt_from_openai_messages


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatRequest(_Wire):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChatCall:
    """A valid request: what the engine is asked, and how the answer is sent back."""

    model: str
    prompt: Prompt
    image_urls: list[str]
    options: GenerationOptions
    stream: bool
    include_usage: bool
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))


def _param(loc: tuple[int | str, ...]) -> str:
    return ".".join(f"[{x}]" if isinstance(x, int) else x for x in loc)


def read_chat_request(body: bytes, *, max_images: int, default_max_tokens: int) -> ChatCall:
    """The request ``body`` as a :class:`ChatCall`; :class:`ChatAPIError` (400) names what
    is wrong with it."""
    try:
        request = ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise ChatAPIError(
                400, "We could not parse the JSON body of your request: it is not valid JSON."
            ) from exc
        param = _param(err["loc"])
        if err["type"] == "missing":
            raise ChatAPIError(400, f"Missing required parameter: '{param}'.", param=param) from exc
        raise ChatAPIError(400, f"Invalid '{param}': {err['msg']}.", param=param) from exc
    extra = request.model_extra or {}
    for name in _UNSUPPORTED:
        if extra.get(name):
            raise ChatAPIError(400, f"'{name}' is not supported by this server.", param=name)
    if request.response_format not in (None, {"type": "text"}):
        raise ChatAPIError(
            400, "Only text answers are supported (response_format: text).", param="response_format"
        )
    try:
        prompt, urls = prompt_from_openai_messages(
            [m.model_dump(include={"role", "content"}) for m in request.messages]
        )
    except ValueError as exc:
        raise ChatAPIError(400, str(exc), param="messages") from exc
    if len(urls) > max_images:
        raise ChatAPIError(
            400,
            f"Too many images: {len(urls)}; this server takes at most {max_images} a request.",
            param="messages",
            code="too_many_images",
        )
    if not prompt.parts:
        raise ChatAPIError(400, "The messages hold no text and no image.", param="messages")
    max_tokens = request.max_completion_tokens or request.max_tokens or default_max_tokens
    options = GenerationOptions(max_tokens=max_tokens, temperature=request.temperature or 0.0)
    include_usage = request.stream_options is not None and request.stream_options.include_usage
    return ChatCall(request.model, prompt, urls, options, request.stream, include_usage)


def frame_from_url(url: str, index: int) -> bytes:
    """Image ``index`` of a request as JPEG bytes (blocking: decodes it)."""
    param = "messages"
    if url.startswith(("http://", "https://")):
        raise ChatAPIError(
            400,
            f"Image {index} is a web URL: this server does not fetch from the network; send "
            "the image inline as a data URL (data:image/jpeg;base64,...).",
            param=param,
            code="invalid_image_url",
        )
    head, comma, data = url.partition(",")
    if not (head.startswith("data:image/") and head.endswith(";base64") and comma):
        raise ChatAPIError(
            400,
            f"Image {index}: expected a base64 data URL (data:image/jpeg;base64,...), got "
            f"'{url[:40]}'.",
            param=param,
            code="invalid_image_url",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ChatAPIError(
            400, f"Image {index}: the data URL is not valid base64.", param=param,
            code="invalid_image_url",
        ) from exc  # fmt: skip
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            if raw.startswith(_JPEG_MAGIC):
                return raw
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ChatAPIError(
            400, f"Image {index} could not be decoded: {exc}", param=param, code="invalid_image"
        ) from exc


def frames_from_urls(urls: list[str]) -> list[bytes]:
    """Every image of a request as JPEG bytes, in order (blocking)."""
    return [frame_from_url(url, i) for i, url in enumerate(urls)]


# -- responses --------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    call: ChatCall, text: str, finish_reason: str, used: dict[str, int]
) -> dict[str, Any]:
    """The ``chat.completion`` object of a request that did not stream."""
    message = {"role": "assistant", "content": text, "refusal": None}
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": used,
    }


def chunk_event(call: ChatCall, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    """One ``chat.completion.chunk`` event of a stream."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    # as OpenAI: with include_usage, every chunk but the last carries "usage": null
    return _chunk(call, [choice], None, with_usage=call.include_usage)


def usage_event(call: ChatCall, used: dict[str, int]) -> bytes:
    """The last chunk of a stream that asked for ``stream_options.include_usage``."""
    return _chunk(call, [], used, with_usage=True)


def _chunk(
    call: ChatCall, choices: list[dict[str, Any]], used: dict[str, int] | None, *, with_usage: bool
) -> bytes:
    chunk: dict[str, Any] = {
        "id": call.id,
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": call.model,
        "choices": choices,
    }
    if with_usage:
        chunk["usage"] = used
    return event(chunk)


def event(data: dict[str, Any] | str) -> bytes:
    """A server-sent event: ``data: ...`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


DONE = event("[DONE]")
