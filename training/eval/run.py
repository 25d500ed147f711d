"""Run a model over held-out records and score it (:mod:`.metrics`).

The model is a local checkpoint folder or any OpenAI-compatible endpoint, so GPT-4o and a
fine-tuned model are compared on the same clips with the same prompts (each record's own
prompt, rebuilt by the shared prompt builder's parser).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lavia_live.contract.guidance import parse_guidance
from lavia_live.contract.prompt import parse_llava_text
from lavia_live.contract.records import InstructionRecord, iter_records
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import Engine, EngineError, GenerationOptions, complete
from lavia_live.errors import RecordError
from training.eval.metrics import ClipScore, Totals, score, totals


@dataclass
class EvalResult:
    model: str
    data: list[str]
    scores: list[ClipScore]
    totals: Totals
    failures: list[str]


def _steps(record: InstructionRecord, library: TaskLibrary) -> tuple[str, ...]:
    if record.task_id and record.task_id in library:
        return library[record.task_id].steps
    return ()


async def evaluate(
    engine: Engine,
    data: Sequence[str | Path],
    *,
    library: TaskLibrary,
    limit: int | None = None,
    concurrency: int = 1,
    max_tokens: int = 96,
    progress: bool | None = None,
) -> EvalResult:
    records: list[tuple[InstructionRecord, Path]] = []
    for path in data:
        root = Path(path).resolve().parent
        records += [(r, root) for r in iter_records(path) if r.annotation is not None]
    if not records:
        raise RecordError(f"no annotated records in {', '.join(map(str, data))}")
    records = records[:limit] if limit else records
    scores: dict[int, ClipScore] = {}
    failures: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(
        total=len(records),
        desc="eval",
        unit="clip",
        disable=None if progress is None else not progress,
    )
    options = GenerationOptions(max_tokens=max_tokens)

    async def one(i: int, record: InstructionRecord, root: Path) -> None:
        assert record.annotation is not None
        async with gate:
            frames = await asyncio.to_thread(
                lambda: [(root / p).read_bytes() for p in record.image]
            )
            started = time.perf_counter()
            try:
                answer = await complete(
                    engine, parse_llava_text(record.prompt_text), frames, options
                )
            except EngineError as exc:
                failures.append(f"{record.id}: {exc}")
                answer = ""
            latency = time.perf_counter() - started
        ref = record.annotation
        scores[i] = score(
            record.id, parse_guidance(answer), ref.current_step, ref.next_step, ref.warning,
            _steps(record, library), latency,
        )  # fmt: skip
        bar.update()

    try:
        await asyncio.gather(*(one(i, r, root) for i, (r, root) in enumerate(records)))
    finally:
        bar.close()
        await engine.aclose()
    ordered = [scores[i] for i in sorted(scores)]
    return EvalResult(engine.name, [str(p) for p in data], ordered, totals(ordered), failures)
