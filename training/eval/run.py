"""Run a model over held-out records and score it (:mod:`.metrics`).

The model is a local checkpoint folder or any OpenAI-compatible endpoint, so GPT-4o and a
fine-tuned model are compared on the same clips with the same prompts (each record's own
prompt, rebuilt by the shared prompt builder's parser). Guidance records (with an
``annotation``) are scored as guidance; question records (with a ``question``) are asked
as questions and scored by the facts their answer states, separately. A guidance record
whose source video is a demo video with its ground truth beside it also gets how far into
its step the clip ends, for the accuracy by time into the step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lavia_live.contract.guidance import parse_guidance
from lavia_live.contract.prompt import PromptKind, parse_llava_text
from lavia_live.contract.records import InstructionRecord, iter_records
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import Engine, EngineError, GenerationOptions, complete
from lavia_live.errors import RecordError
from training.data.manifest import truth_path
from training.data.oracle import load_truth
from training.demo.render import DemoTruth
from training.eval.metrics import (
    ClipScore,
    QuestionScore,
    QuestionTotals,
    Totals,
    question_totals,
    score,
    score_question,
    totals,
)


@dataclass
class EvalResult:
    model: str
    data: list[str]
    scores: list[ClipScore]  # guidance records
    totals: Totals
    failures: list[str]
    questions: list[QuestionScore] = field(default_factory=list)
    question_totals: QuestionTotals = field(default_factory=QuestionTotals)


def _steps(record: InstructionRecord, library: TaskLibrary) -> tuple[str, ...]:
    if record.task_id and record.task_id in library:
        return library[record.task_id].steps
    return ()


def _into_step(record: InstructionRecord, truths: dict[str, DemoTruth | None]) -> float | None:
    """Seconds from the start of the step in progress at the clip's last frame to that frame,
    when the record's video has a ground truth beside it (None otherwise). ``truths`` caches
    each video's truth (or its absence)."""
    video = record.source_video
    if video is None or not record.frame_timestamps:
        return None
    if video not in truths:
        path = Path(video)
        truths[video] = load_truth(path) if truth_path(path).is_file() else None
    truth = truths[video]
    if truth is None:
        return None
    frame = truth.frame_at(record.frame_timestamps[-1])
    return (frame - truth.spans[truth.span_index_at(frame)].start_frame) / truth.fps


async def evaluate(
    engine: Engine,
    data: Sequence[str | Path],
    *,
    library: TaskLibrary,
    limit: int | None = None,
    concurrency: int = 1,
    max_tokens: int = 96,
    question_max_tokens: int = 128,
    progress: bool | None = None,
) -> EvalResult:
    """Ask ``engine`` every guidance and question record of ``data`` (the first ``limit``
    of them) and score the answers; the engine is closed at the end."""
    records: list[tuple[InstructionRecord, Path]] = []
    for path in data:
        root = Path(path).resolve().parent
        records += [
            (r, root)
            for r in iter_records(path)
            if r.annotation is not None or r.question is not None
        ]
    if not records:
        raise RecordError(f"no guidance or question records in {', '.join(map(str, data))}")
    records = records[:limit] if limit else records
    truths: dict[str, DemoTruth | None] = {}
    into_step = {
        i: _into_step(r, truths) for i, (r, _) in enumerate(records) if r.annotation is not None
    }
    scores: dict[int, ClipScore] = {}
    questions: dict[int, QuestionScore] = {}
    failures: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(
        total=len(records),
        desc="eval",
        unit="record",
        disable=None if progress is None else not progress,
    )
    guidance_options = GenerationOptions(max_tokens=max_tokens)
    question_options = GenerationOptions(max_tokens=question_max_tokens)

    async def ask(record: InstructionRecord, root: Path) -> tuple[str, float]:
        kind: PromptKind = "guidance" if record.question is None else "question"
        options = guidance_options if record.question is None else question_options
        async with gate:
            frames = await asyncio.to_thread(
                lambda: [(root / p).read_bytes() for p in record.image]
            )
            started = time.perf_counter()
            try:
                answer = await complete(
                    engine, parse_llava_text(record.prompt_text, kind=kind), frames, options
                )
            except EngineError as exc:
                failures.append(f"{record.id}: {exc}")
                answer = ""
            return answer, time.perf_counter() - started

    async def one(i: int, record: InstructionRecord, root: Path) -> None:
        answer, latency = await ask(record, root)
        if record.question is not None:
            q = record.question
            questions[i] = score_question(
                record.id, q.kind, q.question, q.facts, answer.strip(), latency
            )
        else:
            ref = record.annotation
            assert ref is not None
            scores[i] = score(
                record.id, parse_guidance(answer), ref.current_step, ref.next_step, ref.warning,
                _steps(record, library), latency, frames=len(record.image),
                into_step_s=into_step[i],
            )  # fmt: skip
        bar.update()

    try:
        await asyncio.gather(*(one(i, r, root) for i, (r, root) in enumerate(records)))
    finally:
        bar.close()
        await engine.aclose()
    ordered = [scores[i] for i in sorted(scores)]
    asked = [questions[i] for i in sorted(questions)]
    return EvalResult(
        engine.name,
        [str(p) for p in data],
        ordered,
        totals(ordered),
        failures,
        asked,
        question_totals(asked),
    )
