"""Annotate clips with a VLM behind any OpenAI-compatible chat-completions endpoint.

GPT-4o by default; point ``base_url``/``model`` at an SGLang (or vLLM) server to annotate
with a local open model. One request per clip: the shared prompt (:mod:`lavia_live.contract
.prompt`) with the clip's frames as JPEG data URLs, oldest first, and (by default) structured
output constrained by :data:`GUIDANCE_JSON_SCHEMA`. Answers are validated into
:class:`Guidance`. Failed requests (408/409/429/5xx, connection errors, timeouts) are retried by
the ``openai`` SDK (``max_retries``, honouring Retry-After); what it cannot retry, an answer
that does not validate, is asked for again here, every answer's billed tokens summed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import openai
from openai.types.chat import ChatCompletion

from lavia_live.contract.guidance import GUIDANCE_JSON_SCHEMA, Guidance, parse_guidance
from lavia_live.contract.prompt import Prompt, TextPart
from lavia_live.contract.tasks import TaskContext
from lavia_live.errors import LaviaError
from lavia_live.openai_compat import MissingAPIKey, api_key_from_env, describe_error, jpeg_data_url

log = logging.getLogger(__name__)

ImageDetail = Literal["low", "high", "auto"]
_BAD_ANSWER = "answer did not match the guidance format"


class AnnotationError(LaviaError):
    """The annotator cannot run (e.g. its API key is missing) or was given a bad request."""


@dataclass(frozen=True)
class AnnotatorOptions:
    model: str = "gpt-4o"
    base_url: str | None = None  # None -> OpenAI's default
    api_key_env: str = "OPENAI_API_KEY"  # "" -> no key needed (a local server)
    max_concurrency: int = 4
    # Retries of one request by the openai SDK: 408/409/429/5xx, timeouts and connection
    # errors, with jittered exponential backoff or the wait Retry-After asks for.
    max_retries: int = 3
    # Requests per clip while the answer does not validate (not JSON, wrong schema, refused).
    max_answer_attempts: int = 3
    timeout_s: float = 60.0
    structured_output: bool = True  # response_format json_schema from GUIDANCE_JSON_SCHEMA
    input_usd_per_mtok: float = 2.50  # GPT-4o list prices, for cost accounting
    output_usd_per_mtok: float = 10.00
    max_tokens: int = 300
    temperature: float = 0.0
    # OpenAI's per-image "detail" (low: 85 tokens a frame, as the estimate assumes); None omits
    # the field. Annotator-side only: the prompt's parts and frame order are unchanged.
    image_detail: ImageDetail | None = "low"

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise AnnotationError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise AnnotationError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_answer_attempts < 1:
            raise AnnotationError(
                f"max_answer_attempts must be >= 1, got {self.max_answer_attempts}"
            )
        if self.timeout_s <= 0:
            raise AnnotationError(f"timeout_s must be > 0, got {self.timeout_s}")


@dataclass(frozen=True)
class AnnotationRequest:
    key: str  # content key of the clip (used in logs/results)
    task: TaskContext
    prompt: Prompt  # from the shared builder
    frames_jpeg: tuple[bytes, ...]  # JPEG bytes, oldest first; become data: URLs
    # Where the clip comes from; annotators that read ground truth (the oracle) use these.
    video: Path | None = None
    timestamps: tuple[float, ...] = ()  # seconds from the start of the video, per frame


@dataclass(frozen=True)
class AnnotationResult:
    key: str
    guidance: Guidance | None  # None on failure
    raw: str  # the last raw answer text ('' if none)
    model: str  # the model that answered, as the server names it (e.g. a dated snapshot)
    prompt_tokens: int  # summed over all attempts that returned usage
    completion_tokens: int
    cost_usd: float
    attempts: int  # answers asked for (the SDK's retries of a failed request not counted)
    error: str | None  # specific reason on failure

    @property
    def ok(self) -> bool:
        return self.guidance is not None and self.error is None


class Annotator(Protocol):
    name: str  # recorded in records as the annotator, e.g. "openai:gpt-4o"

    async def annotate(self, request: AnnotationRequest) -> AnnotationResult: ...

    async def aclose(self) -> None: ...


def estimate_prompt_tokens(prompt: Prompt, n_images: int, detail: str = "low") -> int:
    """Rough input tokens of one request, for ``--dry-run`` cost estimates.

    Assumptions: text is ~4 characters per token plus 7 tokens of chat framing; images follow
    OpenAI's published rule for GPT-4o: 85 tokens per image at ``detail="low"``; at ``"high"``
    (and ``"auto"``, counted as high) 85 + 170 per 512 px tile, counted here as one tile, which
    holds for frames of at most 512x512; larger frames at high detail cost more. Cached input
    discounts are ignored, so estimates (like ``cost_usd``) are upper bounds.
    """
    per_image = {"low": 85, "high": 85 + 170, "auto": 85 + 170}.get(detail)
    if per_image is None:
        raise ValueError(f"detail must be 'low', 'high' or 'auto', got {detail!r}")
    chars = sum(len(p.text) for p in prompt.parts if isinstance(p, TextPart))
    return 7 + math.ceil(chars / 4) + per_image * n_images


@dataclass
class _Totals:
    """Running totals over the attempts of one request."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw: str = ""


class _InvalidAnswer(Exception):
    """The server answered, but not with usable guidance: worth asking again.
    ``reason`` is short ("malformed response"), ``detail`` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class OpenAIAnnotator:
    """:class:`Annotator` over ``openai.AsyncOpenAI``; safe to share across tasks."""

    def __init__(self, options: AnnotatorOptions) -> None:
        self.options = options
        self.name = f"openai:{options.model}"
        try:
            api_key = api_key_from_env(options.api_key_env, options.base_url)
        except MissingAPIKey as exc:
            raise AnnotationError(str(exc)) from exc
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=options.base_url,
            max_retries=options.max_retries,
            timeout=options.timeout_s,
        )
        self._semaphore = asyncio.Semaphore(options.max_concurrency)

    async def aclose(self) -> None:
        await self._client.close()

    async def annotate(self, request: AnnotationRequest) -> AnnotationResult:
        """Annotate one clip; failures come back as a result with ``error`` set, not raised."""
        messages = self._messages(request)
        async with self._semaphore:
            return await self._annotate(request, messages)

    def _messages(self, request: AnnotationRequest) -> list[dict[str, Any]]:
        if request.prompt.kind != "guidance":
            raise AnnotationError(f"{request.key}: annotation needs a guidance prompt")
        if len(request.frames_jpeg) != request.prompt.n_images:
            raise AnnotationError(
                f"{request.key}: prompt has {request.prompt.n_images} images but "
                f"{len(request.frames_jpeg)} frames were given"
            )
        urls = [jpeg_data_url(f) for f in request.frames_jpeg]
        return request.prompt.openai_messages(urls, self.options.image_detail)

    async def _annotate(
        self, request: AnnotationRequest, messages: list[dict[str, Any]]
    ) -> AnnotationResult:
        opts = self.options
        totals = _Totals(model=opts.model)
        for attempt in range(1, opts.max_answer_attempts + 1):
            started = time.monotonic()
            try:
                guidance = await self._ask(messages, totals)
            except openai.APIError as exc:  # the SDK retried it, or it is not worth retrying
                error = describe_error(exc, opts.timeout_s)
                break
            except _InvalidAnswer as exc:
                error = f"{exc.reason} after {attempt} attempts: {exc.detail}"
                log.debug(
                    "%s: answer %d/%d unusable after %.2f s: %s",
                    request.key,
                    attempt,
                    opts.max_answer_attempts,
                    time.monotonic() - started,
                    exc,
                )
                continue
            log.debug(
                "%s: answer %d valid in %.2f s", request.key, attempt, time.monotonic() - started
            )
            return self._result(request.key, guidance, totals, attempt, None)
        log.warning("%s: annotation failed: %s", request.key, error)
        return self._result(request.key, None, totals, attempt, error)

    async def _ask(self, messages: list[dict[str, Any]], totals: _Totals) -> Guidance:
        """One answer (after the SDK's retries), validated; raises ``openai.APIError`` for a
        request that failed and :class:`_InvalidAnswer` for an answer that is no guidance."""
        opts = self.options
        extra: dict[str, Any] = {}
        if opts.structured_output:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "guidance", "strict": True, "schema": GUIDANCE_JSON_SCHEMA},
            }
        try:
            response: object = await self._client.chat.completions.create(
                model=opts.model,
                messages=cast(Any, messages),
                max_tokens=opts.max_tokens,
                temperature=opts.temperature,
                **extra,
            )
        except (openai.APIResponseValidationError, json.JSONDecodeError) as exc:
            raise _InvalidAnswer("malformed response", "body is not a chat completion") from exc
        if not isinstance(response, ChatCompletion):
            raise _InvalidAnswer("malformed response", "body is not a chat completion")
        if response.usage is not None:
            totals.prompt_tokens += response.usage.prompt_tokens
            totals.completion_tokens += response.usage.completion_tokens
        totals.model = response.model or opts.model
        if not response.choices:
            raise _InvalidAnswer(_BAD_ANSWER, "no choices")
        choice = response.choices[0]
        totals.raw = choice.message.content or ""
        if choice.message.refusal:
            raise _InvalidAnswer(_BAD_ANSWER, f"refused: {_excerpt(choice.message.refusal)}")
        guidance, problem = _validate(totals.raw, opts.structured_output)
        if guidance is None:
            if choice.finish_reason == "length":
                problem = f"cut off at max_tokens={opts.max_tokens}: {problem}"
            raise _InvalidAnswer(_BAD_ANSWER, problem)
        return guidance

    def _result(
        self,
        key: str,
        guidance: Guidance | None,
        totals: _Totals,
        attempts: int,
        error: str | None,
    ) -> AnnotationResult:
        cost = (
            totals.prompt_tokens * self.options.input_usd_per_mtok
            + totals.completion_tokens * self.options.output_usd_per_mtok
        ) / 1e6
        return AnnotationResult(
            key=key,
            guidance=guidance,
            raw=totals.raw,
            model=totals.model,
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            cost_usd=cost,
            attempts=attempts,
            error=error,
        )


def _validate(text: str, structured: bool) -> tuple[Guidance | None, str]:
    """The guidance in ``text``, or None and why it is not a usable guidance answer."""
    if not text.strip():
        return None, "empty answer"
    if structured:
        body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
        try:
            obj = json.loads(body)
        except ValueError:
            return None, f"not JSON: {_excerpt(text)}"
        if not isinstance(obj, dict):
            return None, f"JSON is not an object: {_excerpt(text)}"
        for name in ("current_step", "next_step"):
            if not isinstance(obj.get(name), str):
                return None, f"field {name!r} is missing or not a string: {_excerpt(text)}"
        if not isinstance(obj.get("warning"), str | None):
            return None, f"field 'warning' is not a string or null: {_excerpt(text)}"
    parsed = parse_guidance(text)
    guidance = parsed.guidance
    if parsed.status != "ok" or guidance is None:
        return None, f"no current and next step ({parsed.status}): {_excerpt(text)}"
    return guidance, ""


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


__all__ = [
    "AnnotationError",
    "AnnotationRequest",
    "AnnotationResult",
    "Annotator",
    "AnnotatorOptions",
    "OpenAIAnnotator",
    "estimate_prompt_tokens",
]
