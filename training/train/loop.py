"""The training loop: accelerate (one CPU, one GPU, many GPUs and nodes, DeepSpeed, FSDP),
checkpoints with exact resume, metrics and a progress bar.

Launch on one machine with ``lavia train``; on many GPUs with ``accelerate launch
--config_file configs/accelerate/<strategy>.yaml -m training.train ...``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm
from transformers import get_scheduler

from lavia_live.atomic import atomic_write_json
from training.config import TrainSettings
from training.train.data import (
    IGNORE_INDEX,
    LengthGroupedBatches,
    RecordDataset,
    batch_of,
    load_examples,
)
from training.train.report import write_loss_curve
from training.train.setup import prepare_model, resolve_precision

log = logging.getLogger(__name__)
# With tied embeddings (the tiny models) every checkpoint logs that lm_head was "removed";
# it is the same tensor as embed_tokens and reloads fine (tested), so it is not a warning.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)

STATE_FILE = "trainer_state.json"  # written last: a checkpoint without it is incomplete


def weighted_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, first_token_weight: float
) -> torch.Tensor:
    """Next-token cross entropy over the labelled positions (labels shifted by one, as the
    models do), a weighted mean in which each row's first labelled token counts
    ``first_token_weight`` times."""
    targets = labels[:, 1:]
    scored = logits[:, :-1].float()
    valid = targets != IGNORE_INDEX
    losses = torch.nn.functional.cross_entropy(
        scored.reshape(-1, scored.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    first = valid & (valid.cumsum(dim=1) == 1)
    weights = valid.float() + (first_token_weight - 1.0) * first.float()
    return (losses * weights).sum() / weights.sum().clamp(min=1.0)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    samples: int = 0
    tokens: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    final_dir: Path
    state: TrainState
    trainable_changed: bool | None = None


class Trainer:
    def __init__(self, settings: TrainSettings, *, progress: bool | None = None) -> None:
        self.settings = settings
        self.out = settings.output_dir
        self.progress = progress
        self.accelerator = Accelerator(
            mixed_precision=resolve_precision(settings),
            gradient_accumulation_steps=settings.grad_accum,
        )
        set_seed(settings.seed)
        self.loaded = prepare_model(settings, warm_up=True, progress=progress)
        tokenizer = self.loaded.processor.tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.train_set = RecordDataset(
            load_examples(settings.train_records), self.loaded.processor, self.loaded.family
        )
        self.val_set = (
            RecordDataset(
                load_examples(settings.val_records), self.loaded.processor, self.loaded.family
            )
            if settings.val_records
            else None
        )
        self.lengths = self.train_set.approx_lengths()
        self.batches = LengthGroupedBatches(
            self.lengths, settings.batch_size, settings.seed, settings.group_by_length
        )
        per_epoch = math.ceil(
            len(self.batches) / settings.grad_accum / self.accelerator.num_processes
        )
        # the learning-rate schedule spans schedule_steps; the run ends at total_steps
        self.schedule_steps = settings.max_steps or max(1, math.ceil(per_epoch * settings.epochs))
        self.total_steps = min(self.schedule_steps, settings.stop_after or self.schedule_steps)
        params = [p for p in self.loaded.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        scheduler = get_scheduler(
            settings.scheduler,
            optimizer,
            num_warmup_steps=int(settings.warmup_ratio * self.schedule_steps),
            num_training_steps=self.schedule_steps,
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.loaded.model, optimizer, scheduler
        )
        self.state = TrainState()

    # -- checkpoints -------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        root = self.out / "checkpoints"
        done = (
            [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
        )
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def resume(self, checkpoint: Path | None = None) -> bool:
        """Continue from ``checkpoint`` (default: the latest complete one); False if none."""
        found = checkpoint or (self.checkpoints() or [None])[-1]
        if found is None:
            return False
        self.accelerator.load_state(str(found))
        data = json.loads((found / STATE_FILE).read_text(encoding="utf-8"))
        self.state = TrainState(**data)
        log.info("resumed from %s at step %d", found, self.state.step)
        return True

    def save_checkpoint(self) -> Path:
        path = self.out / "checkpoints" / f"step-{self.state.step:07d}"
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            atomic_write_json(path / STATE_FILE, asdict(self.state))
            for old in self.checkpoints()[: -self.settings.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    # -- the loop ----------------------------------------------------------------------

    def _loader(self, epoch: int, start: int) -> Any:
        batches = self.batches.epoch(epoch)[start:]
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=batches,
            collate_fn=lambda items: batch_of(items, self.pad_id),
            num_workers=self.settings.num_workers,
        )
        return self.accelerator.prepare_data_loader(loader)

    def train(self) -> TrainResult:
        s = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            unit="step",
            # None: on when stderr is a terminal; never on other ranks than the first
            disable=(None if self.progress is None else not self.progress)
            if self.accelerator.is_local_main_process
            else True,
            dynamic_ncols=True,
        )
        self.model.train()
        window: list[float] = []
        started, samples0, tokens0 = time.perf_counter(), self.state.samples, self.state.tokens
        while self.state.step < self.total_steps:
            for batch in self._loader(self.state.epoch, self.state.batch_in_epoch):
                with self.accelerator.accumulate(self.model):
                    loss = self._loss(batch)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                self.state.batch_in_epoch += 1
                self.state.samples += (
                    int(batch["input_ids"].shape[0]) * self.accelerator.num_processes
                )
                self.state.tokens += (
                    int(batch["attention_mask"].sum()) * self.accelerator.num_processes
                )
                window.append(float(loss.detach()))
                if not self.accelerator.sync_gradients:
                    continue
                self.state.step += 1
                bar.update()
                if self.state.step % s.log_every == 0 or self.state.step == self.total_steps:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    entry = {
                        "step": self.state.step,
                        "epoch": self.state.epoch + self.state.batch_in_epoch / len(self.batches),
                        "loss": sum(window) / len(window),
                        "lr": float(self.scheduler.get_last_lr()[0]),
                        "samples_per_s": (self.state.samples - samples0) / elapsed,
                        "tokens_per_s": (self.state.tokens - tokens0) / elapsed,
                        "samples": self.state.samples,
                        "tokens": self.state.tokens,
                        "elapsed_s": elapsed,
                    }
                    window.clear()
                    self._log(entry, bar)
                if self.state.step % s.save_every == 0 or self.state.step == self.total_steps:
                    self.save_checkpoint()
                if self.state.step >= self.total_steps:
                    break
            else:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
        bar.close()
        if self.val_set is not None:
            self._log({"step": self.state.step, "val_loss": self.validate()}, None)
        final = self.save_final()
        if s.step_classifier_epochs > 0 and self.accelerator.is_main_process:
            from training.train.step_classifier import train_step_classifier

            train_step_classifier(final, s, progress=self.progress)
        return TrainResult(final, self.state)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own loss, or with ``first_token_weight`` the same token-mean cross
        entropy with each answer's first token counted that many times."""
        weight = self.settings.first_token_weight
        if weight == 1.0:
            return self.model(**batch).loss
        labels = batch["labels"]
        logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return weighted_token_loss(logits, labels, weight)

    def _log(self, entry: dict[str, float], bar: tqdm[Any] | None) -> None:
        self.state.history.append(entry)
        if not self.accelerator.is_main_process:
            return
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        if bar is not None and "loss" in entry:
            bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
        log.info("step %d: %s", int(entry["step"]), entry)
        write_loss_curve(self.state.history, self.out / "loss.png")

    @torch.no_grad()
    def validate(self) -> float:
        assert self.val_set is not None
        self.model.eval()
        total = count = 0.0
        for i in range(len(self.val_set)):
            batch = batch_of([self.val_set[i]], self.pad_id)
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            total += float(self.model(**batch).loss)
            count += 1
        self.model.train()
        return total / max(count, 1)

    def save_final(self) -> Path:
        """A Hugging Face checkpoint (processor included) that the local engine loads and
        SGLang serves; LoRA merged into the weights when ``merge_lora``."""
        final = self.out / "final"
        self.accelerator.wait_for_everyone()
        state_dict = self.accelerator.get_state_dict(self.model)  # gathered under ZeRO-3
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "merge_and_unload") and self.settings.merge_lora:
            model, state_dict = model.merge_and_unload(), None
        if self.accelerator.is_main_process:
            model.save_pretrained(str(final), safe_serialization=True, state_dict=state_dict)
            self.loaded.processor.save_pretrained(str(final))
        return final
