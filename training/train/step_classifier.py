"""Train a model's step classifier (:mod:`lavia_live.models.step_classifier`).

After ``lavia train`` saves its model, ``train.step_classifier_epochs`` > 0 trains a copy of
the model's vision tower and a linear head to name the current step of each training record
from its last frame alone (the frames and labels the vision warm-up uses), with a cosine
learning-rate schedule, and saves it into the model folder. Validation records, if any, give
its held-out accuracy. The model's own weights are not touched.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from lavia_live.errors import RecordError
from lavia_live.models.families import load_model
from lavia_live.models.step_classifier import StepClassifier
from training.config import TrainSettings
from training.train.data import load_examples, open_images
from training.train.vision_warmup import fit_frames, frame_accuracy, last_frames

log = logging.getLogger(__name__)


def train_step_classifier(
    model_dir: Path, settings: TrainSettings, *, progress: bool | None = None
) -> dict[str, Any]:
    """Train and save ``model_dir``'s step classifier; returns what step_classifier.json
    records about the training."""
    train = last_frames(load_examples(settings.train_records))
    val = last_frames(load_examples(settings.val_records)) if settings.val_records else []
    steps = sorted({label for _, label in train})
    if len(steps) < 2:
        raise RecordError("a step classifier needs training records of at least two steps")
    loaded = load_model(model_dir, dtype="float32")
    classifier = StepClassifier.initial(loaded, steps)
    del loaded
    index = {step: i for i, step in enumerate(steps)}
    params = classifier.parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.step_classifier_lr, weight_decay=0.01)
    batch = settings.vision_warmup_batch

    def logits_of(paths: list[Path]) -> torch.Tensor:
        return classifier.logits(open_images(paths))

    started = time.perf_counter()
    train_accuracy = fit_frames(
        train,
        index,
        logits_of,
        optimizer,
        params,
        epochs=settings.step_classifier_epochs,
        batch=batch,
        seed=settings.seed,
        max_grad_norm=settings.max_grad_norm,
        desc="step classifier",
        progress=progress,
        schedule=lambda total: get_scheduler(
            "cosine", optimizer, num_warmup_steps=int(0.05 * total), num_training_steps=total
        ),
    )
    info: dict[str, Any] = {
        "frames": len(train),
        "epochs": settings.step_classifier_epochs,
        "train_accuracy": train_accuracy,
        "val_frames": len(val),
        "val_accuracy": frame_accuracy(logits_of, val, index, batch) if val else None,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    classifier.save(model_dir, info)
    log.info("step classifier: %s", info)
    return info
