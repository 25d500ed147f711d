"""The engine interface: stream the answer text for a prompt and its clip's frames.

Frames reach every engine as JPEG bytes, oldest first: what the dataset build writes and
what a live session encodes from each sampled frame, so training, local inference and
SGLang serving see the same pixels (DESIGN.md, "Frames as images").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lavia_live.contract.prompt import Prompt
from lavia_live.errors import LaviaError


class EngineError(LaviaError):
    """The engine could not answer (server error after retries, model failure). ``code``
    says what kind of failure for clients: ``rate_limited`` (HTTP 429 after the retries),
    ``engine_unavailable`` (5xx, connection refused or lost, a timeout), ``engine_error``."""

    def __init__(self, message: str, code: str = "engine_error") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Usage:
    """Tokens counted by an engine, added up over the requests it was passed to."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # requests whose counts were reported

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.requests += 1


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 128
    temperature: float = 0.0
    # Where the engine adds the request's token counts when it learns them (the usage an
    # OpenAI-compatible server reports, an in-process model's own counts); None: not kept.
    usage: Usage | None = field(default=None, compare=False)


class Engine(Protocol):
    name: str
    max_concurrency: int  # requests worth running at once (1: one at a time in-process)

    def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        """Text pieces of the answer as they are generated."""
        ...

    async def aclose(self) -> None: ...


async def complete(
    engine: Engine, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
) -> str:
    """The whole answer of :meth:`Engine.stream`."""
    return "".join([piece async for piece in engine.stream(prompt, frames_jpeg, options)])
