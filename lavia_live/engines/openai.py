"""Engine over any OpenAI-compatible ``/v1/chat/completions``: GPT-4o, or a model served by
SGLang or vLLM (attach by URL). Streams. The ``openai`` SDK retries a failed request
(``max_retries``: 408/409/429/5xx, connection errors and timeouts, honouring Retry-After)
until a response starts; a stream that then stalls or breaks off is an error, not restarted.
Every request asks for the stream's usage (``stream_options.include_usage``), which goes to
``GenerationOptions.usage``. Closing the stream (or cancelling its reader) closes the HTTP
response, so the server can stop generating."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import openai
from openai.types.chat import ChatCompletionChunk

from lavia_live.contract.prompt import Prompt
from lavia_live.engines.base import EngineError, GenerationOptions
from lavia_live.openai_compat import MissingAPIKey, api_key_from_env, describe_error, jpeg_data_url


@dataclass(frozen=True)
class OpenAIEngineOptions:
    model: str = "gpt-4o"
    base_url: str | None = None  # None: OpenAI; e.g. http://127.0.0.1:30000/v1 for SGLang
    api_key_env: str = "OPENAI_API_KEY"  # "" when the server needs no key
    timeout_s: float = 30.0  # connect, and the longest silence before or within an answer
    # Retries of a request the SDK may make before the answer starts (so at most
    # max_retries + 1 requests a clip); 0 turns them off.
    max_retries: int = 2
    image_detail: str | None = "low"  # OpenAI's image part detail: low, high, auto; None: unset
    max_concurrency: int = 8  # requests in flight across live sessions


class OpenAIEngine:
    def __init__(self, options: OpenAIEngineOptions) -> None:
        self.options = options
        self.name = f"openai:{options.model}"
        self.max_concurrency = options.max_concurrency
        try:
            key = api_key_from_env(options.api_key_env, options.base_url)
        except MissingAPIKey as exc:
            raise EngineError(str(exc)) from exc
        self._client = openai.AsyncOpenAI(
            api_key=key,
            base_url=options.base_url,
            max_retries=options.max_retries,
            timeout=options.timeout_s,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        opts = self.options
        urls = [jpeg_data_url(f) for f in frames_jpeg]
        messages = prompt.openai_messages(urls, opts.image_detail)
        received = 0  # characters yielded so far
        finished = False
        try:
            stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
                model=opts.model,
                messages=messages,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                stream=True,
                stream_options={"include_usage": True},
            )
            response = cast("openai.AsyncStream[ChatCompletionChunk]", stream)
            try:
                async for chunk in response:
                    if chunk.usage is not None and options.usage is not None:
                        used = chunk.usage
                        options.usage.add(used.prompt_tokens, used.completion_tokens)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.delta.content:
                        received += len(choice.delta.content)
                        yield choice.delta.content
                    finished = finished or choice.finish_reason is not None
            finally:
                await response.close()  # also when the consumer stops early
        except openai.APIError as exc:
            reason = describe_error(exc, opts.timeout_s)
            raise EngineError(self._failure(reason, received), error_code(exc)) from exc
        except ValueError as exc:  # an event whose data is not JSON
            raise EngineError(self._failure(f"malformed response: {exc}", received)) from exc
        if not finished:
            raise EngineError(self._failure("the stream ended without a finish reason", received))

    def _failure(self, reason: str, received: int) -> str:
        if received:  # part of an answer was shown: it is not asked for again
            return f"{self.name}: stream broke off after {received} characters: {reason}"
        return f"{self.name}: {reason}"


def error_code(exc: openai.APIError) -> str:
    """The :class:`EngineError` code of a failed request: ``rate_limited`` (429),
    ``engine_unavailable`` (5xx, no connection, a timeout), else ``engine_error``."""
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.InternalServerError | openai.APIConnectionError):
        return "engine_unavailable"  # APITimeoutError is an APIConnectionError
    return "engine_error"
