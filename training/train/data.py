"""Training examples from instruction records: the record's prompt, its frames, its answer.

The prompt is rebuilt from the record's human turn with the shared
:func:`~lavia_live.contract.prompt.parse_llava_text`, and encoded by the model family's
processor (:func:`lavia_live.models.families.encode`) exactly as the local engine encodes a
live request; the loss covers the assistant answer only (:func:`labels_for`).

A record whose frames are missing fails the run before training starts, naming it: a broken
sample is never swapped for its neighbour.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lavia_live.contract.prompt import parse_llava_text
from lavia_live.contract.records import InstructionRecord, iter_records
from lavia_live.errors import LaviaError, RecordError
from lavia_live.models.families import Encoded, Family, collate, encode


def batch_of(items: list[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Model inputs with ``labels`` (loss on the answer tokens only) for a list of examples."""
    inputs, labels = collate(items, pad_token_id, IGNORE_INDEX)
    return {**inputs, "labels": labels}


IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    record: InstructionRecord
    root: Path  # frame paths are relative to the records file's folder


def load_examples(paths: Sequence[str | Path]) -> list[Example]:
    """All records of ``paths``; raises :class:`RecordError` listing records with missing frames."""
    examples: list[Example] = []
    missing: list[str] = []
    for path in paths:
        root = Path(path).resolve().parent
        for record in iter_records(path):
            absent = [p for p in record.image if not (root / p).is_file()]
            if absent:
                missing.append(f"{path}: record {record.id}: missing frame {absent[0]}")
            examples.append(Example(record, root))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise RecordError("records with missing frames:\n  " + "\n  ".join(missing[:5]) + more)
    if not examples:
        raise RecordError(f"no records in {', '.join(map(str, paths))}")
    return examples


def open_images(paths: Sequence[Path]) -> list[Image.Image]:
    """The image files ``paths`` as RGB images, in memory."""
    images = []
    for path in paths:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images


def load_frames(example: Example) -> list[Image.Image]:
    return open_images([example.root / rel for rel in example.record.image])


class RecordDataset(torch.utils.data.Dataset[Encoded]):
    """Training examples encoded with their answers (batch size 1; labels come from
    :func:`~lavia_live.models.families.labels_for` in :func:`batch_of`)."""

    def __init__(self, examples: list[Example], processor: Any, family: Family) -> None:
        self.examples = examples
        self.processor = processor
        self.family = family

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Encoded:
        example = self.examples[index]
        record = example.record
        try:
            prompt = parse_llava_text(record.prompt_text)
            frames = load_frames(example)
            return encode(self.processor, self.family, prompt, frames, record.answer_text)
        except (OSError, LaviaError) as exc:
            raise RecordError(f"record {record.id}: cannot encode: {exc}") from exc

    def approx_lengths(self) -> list[int]:
        """Tokens per example without decoding images: text tokens + tokens per frame."""
        per_frame = self._tokens_per_frame()
        tokenizer = self.processor.tokenizer
        lengths = []
        for example in self.examples:
            text = (example.record.prompt_text + example.record.answer_text).replace("<image>", "")
            lengths.append(
                len(tokenizer(text)["input_ids"]) + per_frame * len(example.record.image)
            )
        return lengths

    def _tokens_per_frame(self) -> int:
        first = self.examples[0]
        if not first.record.image:
            return 0
        return self[0].n_image_tokens // len(first.record.image)


class LengthGroupedBatches:
    """Batches of similar length (less padding), in an order fixed by (seed, epoch).

    Examples are shuffled, cut into mega-batches of ``50 * batch_size``, sorted by length
    inside each, then batched; batch order is shuffled again. The same seed and epoch give
    the same batches, which is what makes resuming exact.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: bool = True):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.group:
            mega = 50 * self.batch_size
            chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
            order = [i for c in chunks for i in sorted(c, key=lambda j: -self.lengths[j])]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group:
            rng.shuffle(batches)
        return batches

    def iter_from(self, epoch: int, start: int) -> Iterator[list[int]]:
        yield from self.epoch(epoch)[start:]
