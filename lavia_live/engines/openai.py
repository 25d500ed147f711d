"""Engine over any OpenAI-compatible ``/v1/chat/completions``: GPT-4o, or a model served by
SGLang or vLLM (attach by URL). Streams; retries what a retry can fix before the first
token arrives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import openai
from openai.types.chat import ChatCompletionChunk

from lavia_live.contract.prompt import Prompt
from lavia_live.engines.base import EngineError, GenerationOptions
from lavia_live.openai_compat import (
    MissingAPIKey,
    api_key_from_env,
    backoff_s,
    error_message,
    is_retryable_status,
    jpeg_data_url,
    retry_after_s,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenAIEngineOptions:
    model: str = "gpt-4o"
    base_url: str | None = None  # None: OpenAI; e.g. http://127.0.0.1:30000/v1 for SGLang
    api_key_env: str = "OPENAI_API_KEY"  # "" when the server needs no key
    timeout_s: float = 30.0
    max_attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    image_detail: str | None = "low"
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
            api_key=key, base_url=options.base_url, max_retries=0, timeout=options.timeout_s
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        opts = self.options
        urls = [jpeg_data_url(f) for f in frames_jpeg]
        messages = prompt.openai_messages(urls, opts.image_detail)
        for attempt in range(1, opts.max_attempts + 1):
            delay = 0.0
            started = False
            try:
                stream = await self._client.chat.completions.create(
                    model=opts.model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=options.max_tokens,
                    temperature=options.temperature,
                    stream=True,
                )
                response = cast("openai.AsyncStream[ChatCompletionChunk]", stream)
                try:
                    async for chunk in response:
                        if chunk.choices and chunk.choices[0].delta.content:
                            started = True
                            yield chunk.choices[0].delta.content
                finally:
                    await response.close()  # also when the consumer stops early
                return
            except openai.APIStatusError as exc:
                reason = f"HTTP {exc.status_code}: {error_message(exc)}"
                if not is_retryable_status(exc.status_code):
                    raise EngineError(f"{self.name}: {reason}") from exc
                delay = retry_after_s(exc.response.headers)
            except openai.APITimeoutError:
                reason = f"no answer within {opts.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                reason = f"connection error: {exc.__cause__ or exc.message}"
            except (openai.APIResponseValidationError, ValueError) as exc:
                reason = f"malformed response: {exc}"
            if started:  # half an answer was shown: do not start it again
                raise EngineError(f"{self.name}: stream broke off: {reason}")
            log.debug("%s: attempt %d/%d failed: %s", self.name, attempt, opts.max_attempts, reason)
            if attempt < opts.max_attempts:
                await asyncio.sleep(backoff_s(attempt, opts.backoff_s, opts.max_backoff_s, delay))
        raise EngineError(f"{self.name}: {reason} after {opts.max_attempts} attempts")
