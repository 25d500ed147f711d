"""Vision warm-up: before instruction tuning, the vision tower and its projector learn to
tell the task's steps apart in single frames.

Each training clip's last frame is labelled with the record's current step (the annotation
is about that moment), the frames go through the model family's image processor exactly as
in training, and a linear head on the mean of each frame's image tokens is trained with
cross-entropy, together with every trainable vision parameter (projector / merger
included). The head is then dropped. This is what a pretrained image encoder gives a
full-size model; a model trained from scratch (the embedded demo model) learns its steps
several times faster after it, as the answer loss alone reaches the vision tower slowly.

The warmed-up vision weights are saved in the run folder, so an interrupted run does not
repeat the warm-up.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from lavia_live.atomic import atomic_write_bytes, atomic_write_json
from lavia_live.errors import RecordError
from lavia_live.models.families import LoadedModel, vision_parameters
from training.config import TrainSettings
from training.train.data import Example, load_examples, open_images
from training.train.setup import TrainError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "vision_warmup.safetensors"
REPORT_FILE = "vision_warmup.json"  # written last: without it the warm-up is redone


@dataclass(frozen=True)
class WarmupReport:
    frames: int
    classes: list[str]
    epochs: float
    train_accuracy: float
    val_frames: int
    val_accuracy: float | None
    elapsed_s: float


def last_frames(examples: list[Example]) -> list[tuple[Path, str]]:
    """(frame file, current step) for each record's last frame, each file once."""
    seen: dict[Path, str] = {}
    for example in examples:
        record = example.record
        if record.image and record.annotation is not None:
            seen.setdefault(example.root / record.image[-1], record.annotation.current_step)
    return list(seen.items())


def warm_up_vision(
    loaded: LoadedModel, settings: TrainSettings, *, progress: bool | None = None
) -> WarmupReport:
    """Warm up ``loaded``'s vision weights in place (or load a finished warm-up of this run)."""
    out = settings.output_dir
    if (out / REPORT_FILE).is_file() and (out / WEIGHTS_FILE).is_file():
        report = WarmupReport(**json.loads((out / REPORT_FILE).read_text(encoding="utf-8")))
        named = dict(vision_parameters(loaded.model, loaded.family))
        saved = load_file(str(out / WEIGHTS_FILE))
        if saved.keys() != named.keys() or any(saved[n].shape != named[n].shape for n in named):
            raise TrainError(
                f"{out / WEIGHTS_FILE} is the warm-up of another model; "
                "use a new output_dir or delete it and its report to warm up again"
            )
        with torch.no_grad():
            for name, value in saved.items():
                named[name].copy_(value)
        log.info("vision warm-up loaded from %s", out / WEIGHTS_FILE)
        return report

    train = last_frames(load_examples(settings.train_records))
    val = last_frames(load_examples(settings.val_records)) if settings.val_records else []
    classes = sorted({label for _, label in train})
    if len(classes) < 2:
        raise RecordError(
            "vision warm-up needs training records of at least two different current steps"
        )
    index = {label: i for i, label in enumerate(classes)}
    params = [p for _, p in vision_parameters(loaded.model, loaded.family) if p.requires_grad]
    if not params:
        raise TrainError("vision warm-up: the model has no trainable vision parameters")
    model = loaded.model
    with torch.no_grad():
        width = _features(loaded, [train[0][0]]).shape[-1]
    head = torch.nn.Linear(width, len(classes)).to(params[0].device)
    optimizer = torch.optim.AdamW(
        params + list(head.parameters()), lr=settings.vision_warmup_lr, weight_decay=0.01
    )
    batch = settings.vision_warmup_batch

    def logits_of(paths: list[Path]) -> torch.Tensor:
        return head(_features(loaded, paths))  # type: ignore[no-any-return]

    started = time.perf_counter()
    model.train()
    train_accuracy = fit_frames(
        train,
        index,
        logits_of,
        optimizer,
        params,
        epochs=settings.vision_warmup_epochs,
        batch=batch,
        seed=settings.seed,
        max_grad_norm=settings.max_grad_norm,
        desc="vision warm-up",
        progress=progress,
    )
    val_accuracy = None
    if val:
        model.eval()
        val_accuracy = frame_accuracy(logits_of, val, index, batch)
        model.train()
    report = WarmupReport(
        frames=len(train),
        classes=classes,
        epochs=settings.vision_warmup_epochs,
        train_accuracy=train_accuracy,
        val_frames=len(val),
        val_accuracy=val_accuracy,
        elapsed_s=time.perf_counter() - started,
    )
    out.mkdir(parents=True, exist_ok=True)
    weights = {n: p.detach().contiguous() for n, p in vision_parameters(model, loaded.family)}
    atomic_write_bytes(out / WEIGHTS_FILE, save(weights))
    atomic_write_json(out / REPORT_FILE, asdict(report))
    log.info(
        "vision warm-up: %d frames, %s epochs, train accuracy %.3f, val accuracy %s",
        report.frames,
        report.epochs,
        report.train_accuracy,
        "-" if val_accuracy is None else f"{val_accuracy:.3f}",
    )
    return report


def fit_frames(
    frames: list[tuple[Path, str]],
    index: dict[str, int],
    logits_of: Callable[[list[Path]], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    clipped: list[torch.nn.Parameter],
    *,
    epochs: float,
    batch: int,
    seed: int,
    max_grad_norm: float,
    desc: str,
    progress: bool | None,
    schedule: Callable[[int], Any] | None = None,
) -> float:
    """Train a frame classifier (``logits_of(paths)``, one row per frame) on ``frames`` with
    cross-entropy: ``epochs`` passes in batches of ``batch``, shuffled by ``seed``, gradients
    of ``clipped`` clipped to ``max_grad_norm``; ``schedule(total_steps)`` makes a learning-rate
    scheduler stepped after each step. Returns the training accuracy of the last (possibly
    partial) epoch."""
    total = max(1, round(-(-len(frames) // batch) * epochs))
    scheduler = schedule(total) if schedule is not None else None
    rng = random.Random(seed)
    bar = tqdm(
        total=total,
        desc=desc,
        unit="step",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    step = correct = seen = 0
    while step < total:
        order = list(range(len(frames)))
        rng.shuffle(order)
        correct = seen = 0
        for start in range(0, len(order), batch):
            items = [frames[i] for i in order[start : start + batch]]
            logits = logits_of([path for path, _ in items])
            target = torch.tensor([index[label] for _, label in items], device=logits.device)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clipped, max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            correct += int((logits.argmax(-1) == target).sum())
            seen += len(items)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step >= total:
                break
    bar.close()
    return correct / max(seen, 1)


def _features(loaded: LoadedModel, paths: list[Path]) -> torch.Tensor:
    """One vector per frame: the mean of its image tokens as the LLM receives them."""
    inputs: dict[str, Any] = dict(
        loaded.processor.image_processor(images=open_images(paths), return_tensors="pt")
    )
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    device = next(loaded.model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    tokens = loaded.model.model.get_image_features(**inputs).pooler_output
    return torch.stack([t.reshape(-1, t.shape[-1]).float().mean(0) for t in tokens])


@torch.no_grad()
def frame_accuracy(
    logits_of: Callable[[list[Path]], torch.Tensor],
    frames: list[tuple[Path, str]],
    index: dict[str, int],
    batch: int,
) -> float:
    """The share of ``frames`` whose label (by ``index``) the classifier scores highest; a
    label ``index`` does not hold is never right."""
    correct = 0
    for start in range(0, len(frames), batch):
        items = frames[start : start + batch]
        predicted = logits_of([p for p, _ in items]).argmax(-1).tolist()
        labels = [index.get(label) for _, label in items]
        correct += sum(a == b for a, b in zip(labels, predicted, strict=True))
    return correct / len(frames)
