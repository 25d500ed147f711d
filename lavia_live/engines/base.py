"""The engine interface: stream the answer text for a prompt and its clip's frames.

Frames reach every engine as JPEG bytes, oldest first: what the dataset build writes and
what a live session encodes from each sampled frame, so training, local inference and
SGLang serving see the same pixels (DESIGN.md, "Frames as images").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from lavia_live.contract.prompt import Prompt
from lavia_live.errors import LaviaError


class EngineError(LaviaError):
    """The engine could not answer (server error after retries, model failure)."""


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 128
    temperature: float = 0.0


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
