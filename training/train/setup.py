"""What a training run is made of: the model prepared for its method, and its parameter
counts and memory estimate (``lavia train --dry-run``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavia_live.contract.prompt import IMAGE_TAG
from lavia_live.contract.records import iter_records
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.errors import LaviaError
from lavia_live.models.families import (
    LoadedModel,
    detect_family,
    freeze_vision,
    load_model,
    lora_target_modules,
    qwen2_5_vl_frame_size,
)
from training.config import TrainSettings

log = logging.getLogger(__name__)


class TrainError(LaviaError):
    """The run cannot start or go on (bad settings for this machine, missing model, ...)."""


def resolve_precision(settings: TrainSettings) -> str:
    """accelerate's mixed_precision value: "bf16", "fp16" or "no"."""
    if settings.precision == "fp32":
        return "no"
    if settings.precision in ("bf16", "fp16"):
        if not torch.cuda.is_available() and settings.precision == "fp16":
            raise TrainError("precision fp16 needs a CUDA GPU; use fp32 or bf16 on the CPU")
        return settings.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def prepare_model(
    settings: TrainSettings, *, warm_up: bool = False, progress: bool | None = None
) -> LoadedModel:
    """Load the base model and make the right parameters trainable for ``settings.method``;
    with ``warm_up``, run the vision warm-up (``settings.vision_warmup_epochs``) first."""
    if settings.model is None:
        raise TrainError("no base model: set train.model (a local Hugging Face model folder)")
    if settings.init_tiny and not settings.model.exists():
        init_tiny_model(settings)
    quantization: Any = None
    if settings.method == "qlora":
        if not torch.cuda.is_available():
            raise TrainError("QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); use lora")
        try:
            from transformers import BitsAndBytesConfig
        except ImportError as exc:  # pragma: no cover - transformers always has it
            raise TrainError("this transformers has no BitsAndBytesConfig") from exc
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    dtype = (
        "bfloat16"
        if settings.method != "full" and resolve_precision(settings) == "bf16"
        else "float32"
    )
    if settings.image_pixels is not None:
        family = detect_family(settings.model)
        if family != "qwen2_5_vl":
            raise TrainError(
                f"train.image_pixels applies to Qwen2.5-VL models; {settings.model} is {family}"
            )
    loaded = load_model(settings.model, dtype=dtype, trainable=True, quantization=quantization)
    if settings.image_pixels is not None:
        set_image_pixels(loaded, settings.image_pixels)
    model = loaded.model
    if settings.freeze_vision:
        freeze_vision(model, loaded.family)
    if warm_up and settings.vision_warmup_epochs > 0:
        from training.train.vision_warmup import warm_up_vision

        warm_up_vision(loaded, settings, progress=progress)
    if settings.method in ("lora", "qlora"):
        model = _with_lora(model, loaded, settings)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return LoadedModel(
        model=model, processor=loaded.processor, family=loaded.family, path=loaded.path
    )


def set_image_pixels(loaded: LoadedModel, pixels: int) -> None:
    """Train (and save) the model at a frame budget of ``pixels``: its processor resizes every
    frame to at most that many pixels, the vision tower's patch positions scaling with it.
    The model must be a Qwen2.5-VL (``prepare_model`` checks that before loading it)."""
    image_processor = loaded.processor.image_processor
    old = image_processor.size["longest_edge"]
    image_processor.size = qwen2_5_vl_frame_size(pixels)
    log.info("frame budget %d -> %d pixels", old, pixels)


def init_tiny_model(settings: TrainSettings) -> Path:
    """Create ``settings.model``: a random tiny Qwen2.5-VL whose tokenizer is trained on the
    task library and the training records' prompts and answers."""
    from training.models.tiny import build_tiny_qwen2_5_vl, task_corpus

    assert settings.model is not None
    texts = task_corpus(TaskLibrary.load().values())
    for path in settings.train_records:
        for record in iter_records(path):
            texts += [record.prompt_text.replace(IMAGE_TAG, ""), record.answer_text]
    t = settings.tiny
    log.info("creating a tiny Qwen2.5-VL base model in %s", settings.model)
    return build_tiny_qwen2_5_vl(
        settings.model,
        texts,
        seed=settings.seed,
        image_pixels=t.image_pixels,
        hidden_size=t.hidden_size,
        layers=t.layers,
        vision_hidden=t.vision_hidden,
        vision_depth=t.vision_depth,
        vocab_size=t.vocab_size,
    )


def _with_lora(model: Any, loaded: LoadedModel, settings: TrainSettings) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.method == "qlora":
        model = prepare_model_for_kbit_training(model, settings.gradient_checkpointing)
    # the projector / merger between vision and language trains fully, beside the adapters
    projector = _PROJECTORS[loaded.family]
    trains = any(
        p.requires_grad for n, p in model.named_parameters() if n.startswith(projector + ".")
    )
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=lora_target_modules(model, loaded.family),
        modules_to_save=[projector] if trains else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


_PROJECTORS = {"qwen2_5_vl": "model.visual.merger", "llava": "model.multi_modal_projector"}


@dataclass(frozen=True)
class RunEstimate:
    total_params: int
    trainable_params: int
    tokens_min: int
    tokens_mean: float
    tokens_max: int
    examples: int
    memory_gb: dict[str, float]

    def table(self) -> str:
        share = self.trainable_params / max(self.total_params, 1)
        rows = [
            ("parameters", f"{self.total_params:,}"),
            ("trainable", f"{self.trainable_params:,} ({share:.1%})"),
            ("examples", f"{self.examples:,}"),
            (
                "tokens per example",
                f"min {self.tokens_min}, mean {self.tokens_mean:.0f}, max {self.tokens_max}",
            ),
        ]
        rows += [(f"memory: {k}", f"{v:.2f} GB") for k, v in self.memory_gb.items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def estimate_run(model: Any, settings: TrainSettings, lengths: list[int]) -> RunEstimate:
    """Parameter counts and a rough per-device memory estimate (GB).

    weights at their dtype; gradients and AdamW moments (fp32) for trainable parameters;
    activations ~ 34 bytes x hidden x tokens x layers per example at 16/32-bit (a common
    rule of thumb for transformer blocks), divided by ~sqrt(layers) with checkpointing.
    """
    total = trainable = weight_bytes = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        weight_bytes += n * p.element_size()
        if p.requires_grad:
            trainable += n
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", config)
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    longest = max(lengths) if lengths else 0
    act_bytes = 34 * hidden * longest * layers * settings.batch_size
    if settings.gradient_checkpointing and layers:
        act_bytes /= max(layers**0.5, 1)
    gb = 1024**3
    memory = {
        "weights": weight_bytes / gb,
        "gradients": trainable * 4 / gb,
        "optimizer": trainable * 8 / gb,
        "activations": act_bytes / gb,
    }
    memory["total"] = sum(memory.values())
    return RunEstimate(
        total_params=total,
        trainable_params=trainable,
        tokens_min=min(lengths) if lengths else 0,
        tokens_mean=sum(lengths) / len(lengths) if lengths else 0.0,
        tokens_max=longest,
        examples=len(lengths),
        memory_gb=memory,
    )
