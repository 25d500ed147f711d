"""A model's step classifier: which of the task's steps the newest frame of a clip shows.

A small multimodal LLM reads the current step from a whole clip, and at a step change most of
the clip still shows the step before: it answers with the old step for a few seconds. A
frame classifier reads the newest frame alone. An in-process Qwen2.5-VL model folder may hold
one beside its weights:

- ``step_classifier.safetensors``: a copy of the model's vision tower (its own weights, fine-
  tuned) under ``visual.``, and ``head.weight`` / ``head.bias``: a linear layer over the mean
  of the frame's image tokens, one output per step;
- ``step_classifier.json``: the steps in the head's order, the confidence under which the
  classifier gives no answer, and how it was trained (``lavia train`` writes both:
  ``train.step_classifier_epochs``).

The local engine writes the guidance's ``Current step:`` from it when it is sure and the step
is one of the task's; the model writes the rest of the answer after that line
(:mod:`lavia_live.engines.step_choice`). The frame goes through the model's own image
processor, so the classifier sees what the model sees.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lavia_live.atomic import atomic_write_json
from lavia_live.errors import LaviaError
from lavia_live.models.families import LoadedModel

WEIGHTS_FILE = "step_classifier.safetensors"
CONFIG_FILE = "step_classifier.json"
MIN_CONFIDENCE = 0.5  # below it the classifier gives no answer: the model reads the step


class StepClassifierError(LaviaError):
    """A step classifier that cannot be loaded or built."""


@dataclass
class StepClassifier:
    steps: tuple[str, ...]
    visual: Any  # a Qwen2.5-VL vision tower (its merger included)
    head: torch.nn.Linear
    image_processor: Any
    min_confidence: float = MIN_CONFIDENCE

    @classmethod
    def initial(cls, loaded: LoadedModel, steps: Sequence[str]) -> StepClassifier:
        """A classifier to train: a copy of ``loaded``'s vision tower and a zero head."""
        visual = _tower(loaded)
        tower = copy.deepcopy(visual).float()
        width = int(loaded.model.config.text_config.hidden_size)
        head = torch.nn.Linear(width, len(steps)).to(next(tower.parameters()).device)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
        return cls(tuple(steps), tower, head, loaded.processor.image_processor)

    @classmethod
    def load(cls, loaded: LoadedModel) -> StepClassifier | None:
        """The classifier saved with ``loaded``'s model folder; None if it has none."""
        folder = Path(loaded.path)
        if not (folder / CONFIG_FILE).is_file():
            return None
        try:
            info = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
            steps = tuple(str(s) for s in info["steps"])
            weights = load_file(str(folder / WEIGHTS_FILE))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StepClassifierError(f"{folder}: unreadable step classifier: {exc}") from exc
        model_dtype = next(loaded.model.parameters()).dtype
        tower = copy.deepcopy(_tower(loaded))
        visual = {k[len("visual.") :]: v for k, v in weights.items() if k.startswith("visual.")}
        head = torch.nn.Linear(int(loaded.model.config.text_config.hidden_size), len(steps))
        try:
            tower.load_state_dict({k: v.to(model_dtype) for k, v in visual.items()})
            head.load_state_dict({"weight": weights["head.weight"], "bias": weights["head.bias"]})
        except (RuntimeError, KeyError) as exc:
            raise StepClassifierError(
                f"{folder}: the step classifier does not fit this model: {exc}"
            ) from exc
        head = head.to(device=next(tower.parameters()).device, dtype=model_dtype)
        tower.eval()
        head.eval()
        min_confidence = float(info.get("min_confidence", MIN_CONFIDENCE))
        return cls(steps, tower, head, loaded.processor.image_processor, min_confidence)

    def save(self, folder: Path, info: dict[str, Any]) -> None:
        """Write the two files into ``folder`` (weights in float16: half the size)."""
        weights = {f"visual.{k}": v for k, v in self.visual.state_dict().items()}
        weights |= {f"head.{k}": v for k, v in self.head.state_dict().items()}
        save_file(
            {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in weights.items()},
            str(folder / WEIGHTS_FILE),
        )
        config = {"steps": list(self.steps), "min_confidence": self.min_confidence, **info}
        atomic_write_json(folder / CONFIG_FILE, config)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.visual.parameters(), *self.head.parameters()]

    def logits(self, frames: Sequence[Image.Image]) -> torch.Tensor:
        """One row of step scores per frame (gradients flow when training)."""
        inputs = self.image_processor(images=list(frames), return_tensors="pt")
        device = self.head.weight.device
        pixels = inputs["pixel_values"].to(device=device, dtype=self.head.weight.dtype)
        grid = inputs["image_grid_thw"].to(device)
        tokens = self.visual(pixels, grid_thw=grid).pooler_output
        sizes = (grid.prod(-1) // self.visual.spatial_merge_size**2).tolist()
        means = torch.stack([t.mean(0) for t in torch.split(tokens, sizes)])
        return self.head(means)  # type: ignore[no-any-return]

    @torch.inference_mode()
    def read(self, frame: Image.Image) -> str | None:
        """The step ``frame`` shows, or None when the classifier is not sure enough."""
        probs = torch.softmax(self.logits([frame])[0].float(), -1)
        best = int(probs.argmax())
        return self.steps[best] if float(probs[best]) >= self.min_confidence else None


def _tower(loaded: LoadedModel) -> torch.nn.Module:
    if loaded.family != "qwen2_5_vl":
        raise StepClassifierError(
            f"a step classifier needs a Qwen2.5-VL model; {loaded.path} is {loaded.family}"
        )
    return loaded.model.model.visual  # type: ignore[no-any-return]
