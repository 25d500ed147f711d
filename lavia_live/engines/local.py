"""Engine over a Hugging Face checkpoint in this process (CPU or GPU): the embedded demo
model, or any local checkpoint of a supported family (Qwen2.5-VL, LLaVA-style).

Inputs are encoded by :func:`lavia_live.models.families.encode`, the function training
uses, so the model sees what it was trained on. Generation runs in a worker thread; text
streams back as it is produced. Closing the stream, or cancelling its consumer, stops the
generation at its next token and waits for the thread, so the model is free for the next
request when the stream has ended. With ``max_batch`` > 1, guidance held to the task's
steps from several sessions runs in batches (:mod:`lavia_live.engines.batching`); streamed
answers run one at a time between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from transformers import (
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from lavia_live.contract.prompt import Prompt
from lavia_live.engines.base import EngineError, GenerationOptions
from lavia_live.engines.batching import Batcher
from lavia_live.engines.prefix_cache import PrefixCache
from lavia_live.engines.step_choice import StepLines, StepLinesProcessor, StepSlots
from lavia_live.engines.vision_cache import VisionCache, frame_key, supports_vision_cache
from lavia_live.errors import LaviaError
from lavia_live.models.families import (
    Encoded,
    LoadedModel,
    encode,
    end_of_turn_id,
    generation_batch,
    load_model,
    serving_dtype,
)
from lavia_live.models.step_classifier import StepClassifier

_DONE = object()
_STEP_LINES_CACHE = 32  # tasks whose step lines are kept
T = TypeVar("T")
R = TypeVar("R", StepLines, StepSlots)
K = TypeVar("K", tuple[str, ...], tuple[tuple[str, ...], str])


class _StopWhenSet(StoppingCriteria):
    """Ends a generation at its next token once ``event`` is set (its stream was closed)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


async def _stoppable(stop: threading.Event, func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a worker thread. If the caller is cancelled, ``stop`` is set and
    the thread is waited for, so no generation outlives its request."""
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({work})
        if not work.cancelled():
            work.exception()  # retrieved: the caller is gone, its answer with it
        raise


async def _joined(thread: threading.Thread) -> None:
    """Wait for ``thread`` to end, even if cancelled meanwhile (then re-raised after)."""
    join = asyncio.ensure_future(asyncio.to_thread(thread.join))
    cancelled = False
    while not join.done():
        try:
            await asyncio.shield(join)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _count(options: GenerationOptions, prompt_length: int, out: torch.Tensor) -> None:
    """Add a finished generation's token counts to ``options.usage`` (if kept)."""
    if options.usage is not None:
        options.usage.add(prompt_length, int(out.shape[1]) - prompt_length)


def decode_frames(frames_jpeg: Sequence[bytes]) -> list[Image.Image]:
    images = []
    for i, data in enumerate(frames_jpeg):
        try:
            with Image.open(io.BytesIO(data)) as img:
                images.append(img.convert("RGB"))
        except OSError as exc:
            raise EngineError(f"frame {i} is not a decodable image: {exc}") from exc
    return images


@dataclass(frozen=True)
class _Guidance:
    """One guidance request waiting for a batch."""

    prompt: Prompt
    frames: Sequence[bytes]
    options: GenerationOptions
    lines: StepLines


class LocalEngine:
    """``steps_only``: guidance names only the steps the prompt lists, chosen by beam search
    over ``beams`` lines (:mod:`lavia_live.engines.step_choice`); such an answer arrives in
    one piece. Answers to questions always stream; with ``steps_only`` a step an answer
    names after one of the contract's labels (``Next:``...) is one of the task's."""

    def __init__(
        self,
        path: str | Path | LoadedModel,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        cpu_threads: int = 0,
        steps_only: bool = True,
        beams: int = 1,
        vision_cache: int = 120,
        max_batch: int = 1,
        batch_window_s: float = 0.0,
        prefix_cache: int = 8,
    ) -> None:
        if beams < 1:
            raise EngineError(f"beams must be at least 1, got {beams}")
        if max_batch < 1:
            raise EngineError(f"max_batch must be at least 1, got {max_batch}")
        if cpu_threads > 0:
            # Process-wide. Beside live video work, one thread beats torch's one per core:
            # its threads wait on each other whenever another thread takes a core (10x slower
            # per answer measured on 2 busy cores).
            torch.set_num_threads(cpu_threads)
        if isinstance(path, LoadedModel):  # a model built in memory (scripts/gpu_check)
            self.loaded: LoadedModel = path
        else:
            try:
                self.loaded = load_model(path, device=device, dtype=serving_dtype(dtype, device))
            except LaviaError as exc:
                raise EngineError(str(exc)) from exc
        self.name = f"local:{Path(self.loaded.path).name}"
        # Requests worth having in flight at once: a batch's worth when guidance is batched.
        batched = max_batch > 1 and steps_only and beams == 1
        self.max_concurrency = max_batch if batched else 1
        self.device = device
        # Pixels go to the model in its own dtype (bfloat16 on a GPU); float32 stays as is.
        model_dtype = getattr(self.loaded.model, "dtype", torch.float32)
        self._pixel_dtype = None if model_dtype == torch.float32 else model_dtype
        self.steps_only = steps_only
        self.beams = beams
        self._step_lines: dict[tuple[str, ...], StepLines] = {}
        # The current step read from the newest frame, where the model folder has a step
        # classifier (lavia_live.models.step_classifier); the model writes the rest.
        try:
            self.step_classifier = StepClassifier.load(self.loaded) if steps_only else None
        except LaviaError as exc:
            raise EngineError(str(exc)) from exc
        self._read_lines: dict[tuple[tuple[str, ...], str], StepLines] = {}
        self._step_slots: dict[tuple[str, ...], StepSlots] = {}
        self._lock = asyncio.Lock()
        # Each frame's vision features, reused while it stays in a session's window (up to
        # ``vision_cache`` frames; 0: off). Families without it encode every frame each time.
        self.vision_cache = (
            VisionCache(self.loaded.model, vision_cache)
            if vision_cache > 0 and supports_vision_cache(self.loaded.model)
            else None
        )
        # The KV of each task's fixed prompt text, kept for ``prefix_cache`` tasks (0: off).
        self.prefix_cache = (
            PrefixCache(
                self.loaded.model, self.loaded.model.config.vision_start_token_id, prefix_cache
            )
            if prefix_cache > 0 and self.loaded.family == "qwen2_5_vl"
            else None
        )
        self.batcher: Batcher[_Guidance] | None = (
            Batcher(self._choose_batch, self._lock, max_batch=max_batch, window_s=batch_window_s)
            if batched
            else None
        )

    async def aclose(self) -> None:
        if self.batcher is not None:
            await self.batcher.aclose()

    def _constrained(self, prompt: Prompt) -> StepLines | None:
        """The step lines a guidance answer is held to; None: unconstrained."""
        if not self.steps_only or prompt.kind != "guidance":
            return None
        return self._for_task(self._step_lines, StepLines, prompt.task_steps())

    def _held(self, prompt: Prompt, frames_jpeg: Sequence[bytes], lines: StepLines) -> StepLines:
        """``lines`` held to the current step the step classifier reads from the newest
        frame; ``lines`` as they are without a classifier, a frame, or a sure answer that is
        one of the task's steps (blocking: runs the classifier)."""
        if self.step_classifier is None or not frames_jpeg:
            return lines
        steps = prompt.task_steps()
        step = self.step_classifier.read(decode_frames(frames_jpeg[-1:])[0])
        if step is None or step not in steps:
            return lines
        tokenizer = self.loaded.processor.tokenizer
        return self._kept(
            self._read_lines, (steps, step), lambda: StepLines(tokenizer, steps, step)
        )

    def _slots(self, prompt: Prompt) -> StepSlots | None:
        """The step slots a question's answer is held to; None: unconstrained."""
        if not self.steps_only or prompt.kind != "question":
            return None
        return self._for_task(self._step_slots, StepSlots, prompt.task_steps())

    def _for_task(
        self,
        cache: dict[tuple[str, ...], R],
        make: Callable[[Any, tuple[str, ...]], R],
        steps: tuple[str, ...],
    ) -> R | None:
        """``make(tokenizer, steps)``, kept for the last few tasks; None for no steps."""
        if not steps:
            return None
        tokenizer = self.loaded.processor.tokenizer
        return self._kept(cache, steps, lambda: make(tokenizer, steps))

    @staticmethod
    def _kept(cache: dict[K, R], key: K, make: Callable[[], R]) -> R:
        """``cache[key]``, made by ``make()`` the first time; the oldest entry goes when the
        cache holds ``_STEP_LINES_CACHE``."""
        if key not in cache:
            if len(cache) >= _STEP_LINES_CACHE:
                cache.pop(next(iter(cache)))
            cache[key] = make()
        return cache[key]

    def _generate_kwargs(
        self,
        prompt: Prompt,
        frames_jpeg: Sequence[bytes],
        options: GenerationOptions,
        stop: threading.Event,
    ) -> dict[str, Any]:
        loaded = self.loaded
        encoded = encode(loaded, loaded.family, prompt, decode_frames(frames_jpeg))
        encoded = encoded.to(self.device, self._pixel_dtype)
        tokenizer = loaded.processor.tokenizer
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": options.temperature}
            if options.temperature > 0
            else {"do_sample": False}
        )
        return dict(
            encoded.inputs,
            frame_keys=[frame_key(f) for f in frames_jpeg] if self.vision_cache is not None else [],
            max_new_tokens=options.max_tokens,
            eos_token_id=end_of_turn_id(loaded.processor, loaded.family),
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
            **sampling,
        )

    def _generate(self, frame_keys: Sequence[bytes] = (), **kwargs: Any) -> torch.Tensor:
        """The model's ``generate`` (blocking).
        ``frame_keys`` name the clip's frames for the vision cache."""
        frames = (
            self.vision_cache.frames(frame_keys)
            if self.vision_cache is not None and frame_keys
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), frames:
            if self.prefix_cache is not None and kwargs.get("num_beams", 1) == 1:
                start = self.prefix_cache.start(kwargs)
                if start is not None:
                    kwargs["cache"] = start
            return self.loaded.model.generate(**kwargs)  # type: ignore[no-any-return]

    def _failed(self, exc: Exception) -> EngineError:
        return EngineError(f"{self.name}: generation failed: {exc}")

    def _choose_batch(self, requests: Sequence[_Guidance], stop: threading.Event) -> list[str]:
        """Guidance answers held to their tasks' steps for several requests in one greedy
        batch (blocking): prompts padded on the left, each row its own task's lines."""
        loaded = self.loaded
        tokenizer = loaded.processor.tokenizer
        try:
            encoded = [
                encode(loaded, loaded.family, r.prompt, decode_frames(r.frames)) for r in requests
            ]
        except LaviaError as exc:
            raise EngineError(f"{self.name}: {exc}") from exc
        inputs = generation_batch(encoded, tokenizer.pad_token_id)
        prompt_length = int(inputs["input_ids"].shape[1])
        keys = (
            [frame_key(f) for r in requests for f in r.frames]
            if self.vision_cache is not None
            else []
        )
        processor = StepLinesProcessor(
            [self._held(r.prompt, r.frames, r.lines) for r in requests], prompt_length
        )
        try:
            out = self._generate(
                frame_keys=keys,
                **Encoded(inputs).to(self.device, self._pixel_dtype).inputs,
                max_new_tokens=max(r.options.max_tokens for r in requests),
                eos_token_id=end_of_turn_id(loaded.processor, loaded.family),
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                logits_processor=LogitsProcessorList([processor]),
                do_sample=False,
            )
        except Exception as exc:  # torch's OOM included; named for the caller
            raise self._failed(exc) from exc
        answers = []
        for row, request in enumerate(requests):
            tokens = out[row, prompt_length : prompt_length + request.options.max_tokens]
            if request.options.usage is not None:
                answer_tokens = int((tokens != tokenizer.pad_token_id).sum())
                prompt_tokens = int(encoded[row].input_ids.shape[1])
                request.options.usage.add(prompt_tokens, answer_tokens)
            answers.append(str(tokenizer.decode(tokens, skip_special_tokens=True)))
        return answers

    def _choose(
        self,
        prompt: Prompt,
        frames_jpeg: Sequence[bytes],
        options: GenerationOptions,
        lines: StepLines,
        stop: threading.Event,
    ) -> str:
        """A whole guidance answer whose step lines are the task's (blocking)."""
        kwargs = self._generate_kwargs(prompt, frames_jpeg, options, stop)
        kwargs.update(do_sample=False)
        kwargs.pop("temperature", None)
        if self.beams > 1:
            kwargs["num_beams"] = self.beams
        prompt_length = int(kwargs["input_ids"].shape[1])
        processor = StepLinesProcessor(self._held(prompt, frames_jpeg, lines), prompt_length)
        try:
            out = self._generate(logits_processor=LogitsProcessorList([processor]), **kwargs)
        except Exception as exc:  # torch's OOM included; named for the caller
            raise self._failed(exc) from exc
        _count(options, prompt_length, out)
        text = self.loaded.processor.tokenizer.decode(
            out[0, prompt_length:], skip_special_tokens=True
        )
        return str(text)

    def _start(
        self,
        prompt: Prompt,
        frames_jpeg: Sequence[bytes],
        options: GenerationOptions,
        stop: threading.Event,
    ) -> tuple[TextIteratorStreamer, threading.Thread, list[BaseException]]:
        loaded = self.loaded
        kwargs = self._generate_kwargs(prompt, frames_jpeg, options, stop)
        tokenizer = loaded.processor.tokenizer
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs["streamer"] = streamer
        prompt_length = int(kwargs["input_ids"].shape[1])
        slots = self._slots(prompt)
        if slots is not None:
            kwargs["logits_processor"] = LogitsProcessorList(
                [StepLinesProcessor(slots, prompt_length)]
            )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                _count(options, prompt_length, self._generate(**kwargs))
            except BaseException as exc:  # noqa: BLE001 - the reader reports it
                errors.append(exc)
            finally:
                streamer.end()  # type: ignore[no-untyped-call]  # the reader never waits on

        # started by the caller once this returns: a request cancelled while its frames are
        # encoded starts no generation
        thread = threading.Thread(target=run, name="lavia-local-generate", daemon=True)
        return streamer, thread, errors

    async def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        stop = threading.Event()
        lines = self._constrained(prompt)
        if lines is not None and self.batcher is not None:
            text = await self.batcher.submit(_Guidance(prompt, frames_jpeg, options, lines))
            if text:
                yield text
            return
        async with self._lock:
            if lines is not None:
                try:
                    text = await _stoppable(
                        stop, self._choose, prompt, frames_jpeg, options, lines, stop
                    )
                except EngineError:
                    raise
                except LaviaError as exc:
                    raise EngineError(f"{self.name}: {exc}") from exc
                if text:
                    yield text
                return
            try:
                streamer, thread, errors = await _stoppable(
                    stop, self._start, prompt, frames_jpeg, options, stop
                )
            except LaviaError as exc:
                raise EngineError(f"{self.name}: {exc}") from exc
            thread.start()
            try:
                while (piece := await asyncio.to_thread(next, streamer, _DONE)) is not _DONE:
                    if piece:
                        yield str(piece)
            finally:
                stop.set()  # the stream was read to its end, closed or cancelled
                await _joined(thread)  # the model is free before the lock is
            if errors:
                error = errors[0]
                if not isinstance(error, Exception):
                    raise error  # KeyboardInterrupt, SystemExit: not the model's failure
                raise self._failed(error) from error
