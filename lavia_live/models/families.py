"""Model families shared by training and local inference: load, encode, label, freeze.

Training (``lavia train``) and the local engine (``lavia serve`` on CPU/GPU) both go through
:func:`encode`, so the token sequence a model is trained on is exactly the one it sees live:
the prompt builder's chat messages, rendered by the checkpoint's own chat template, with the
clip's frames as images in clip order (one image per frame; no video mode).

Processors are built from the checkpoint's tokenizer, its image processor on the PIL backend
and its processor config. The PIL backend is pinned so pixels do not depend on whether
torchvision is installed. For Qwen2.5-VL an image-only processor is used, because the stock
``Qwen2_5_VLProcessor`` also needs a video processor, and that needs torchvision. It saves as
a plain ``Qwen2_5_VLProcessor``, so ``AutoProcessor`` (and SGLang) can load the saved folder
wherever torchvision is installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging as hf_logging

from lavia_live.contract.prompt import ImagePart, Prompt
from lavia_live.errors import LaviaError

Family = Literal["qwen2_5_vl", "llava"]
FAMILIES: tuple[Family, ...] = get_args(Family)

QWEN_END_OF_TURN = "<|im_end|>"
# Tensors whose last axis is the token sequence (trimmed together with input_ids).
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def serving_dtype(dtype: str, device: str) -> str:
    """The dtype to serve a model in: ``"auto"`` on a CUDA GPU that computes in bfloat16 is
    ``"bfloat16"``; otherwise ``dtype`` as given (``"auto"``: the checkpoint's own)."""
    on_gpu = dtype == "auto" and device.startswith("cuda") and torch.cuda.is_available()
    return "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else dtype


# Loading and saving print tqdm bars to stderr; lavia's output is quiet by default and its
# own commands show the progress that matters.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


class ModelLoadError(LaviaError):
    """A model folder is missing, is not a supported family, or lacks its processor."""


class EncodingError(LaviaError):
    """A prompt cannot be encoded (wrong frame count, a chat template that breaks the prefix)."""


def qwen2_5_vl_frame_size(image_pixels: int) -> dict[str, int]:
    """The Qwen2.5-VL image processor's ``size`` for a frame budget of ``image_pixels``: frames
    are resized to at most that many pixels and at least 56x56 (or the budget, if smaller)."""
    return {"longest_edge": image_pixels, "shortest_edge": min(56 * 56, image_pixels)}


class ImageQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (which needs torchvision).

    ``ProcessorMixin`` finds a processor's parts from its ``__init__`` signature, so this one
    consists of the image processor and the tokenizer only. Everything else (placeholder
    expansion, ``mm_token_type_ids``, the chat template, saving) is the stock processor's.
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None
    ) -> None:
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        init: Any = ProcessorMixin.__init__  # untyped in transformers
        init(self, image_processor, tokenizer, chat_template=chat_template)


# Saved configs name the processor class; make them name the stock one.
ImageQwen2_5_VLProcessor.__name__ = Qwen2_5_VLProcessor.__name__

_auto_image_processor: Any = AutoImageProcessor  # its from_pretrained is untyped
_MODEL_CLASSES: dict[Family, Any] = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "llava": LlavaForConditionalGeneration,
}
_PROCESSOR_CLASSES: dict[Family, Any] = {
    "qwen2_5_vl": ImageQwen2_5_VLProcessor,
    "llava": LlavaProcessor,
}


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    family: Family
    path: Path


@dataclass
class Encoded:
    """One example, batch size 1: ``model(**inputs)`` / ``model.generate(**inputs)`` take it."""

    inputs: dict[str, torch.Tensor]
    answer_start: int | None = None  # input_ids[answer_start:] are the answer + end of turn
    n_image_tokens: int = field(default=0)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Encoded:
        """Tensors moved to ``device``; floating ones (pixels) cast to ``dtype`` if given."""
        moved: dict[str, torch.Tensor] = {}
        for key, value in self.inputs.items():
            if dtype is not None and value.is_floating_point():
                moved[key] = value.to(device=device, dtype=dtype)
            else:
                moved[key] = value.to(device)
        return Encoded(moved, self.answer_start, self.n_image_tokens)


def detect_family(path: Path) -> Family:
    """The family of a Hugging Face model folder, from ``model_type`` in its config.json."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: model folder does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a folder (expected a Hugging Face model folder)")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: no config.json (not a Hugging Face model folder)") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{config_file}: cannot read config: {exc}") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    for family in FAMILIES:
        if model_type == family:
            return family
    supported = ", ".join(FAMILIES)
    raise ModelLoadError(
        f"{path}: model_type {model_type!r} is not a supported family (supported: {supported})"
    )


def load_processor(path: str | Path, family: Family | None = None) -> Any:
    """The family's processor from a model folder (tokenizer, PIL image processor, template)."""
    path = Path(path)
    family = family or detect_family(path)
    cls = _PROCESSOR_CLASSES[family]
    try:
        processor_dict, kwargs = cls.get_processor_dict(str(path), local_files_only=True)
        parts = {
            "image_processor": _auto_image_processor.from_pretrained(
                str(path), local_files_only=True, backend="pil"
            ),
            "tokenizer": AutoTokenizer.from_pretrained(str(path), local_files_only=True),
        }
        args = [parts[name] for name in cls.get_attributes()]
        processor = cls.from_args_and_dict(args, processor_dict, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: no usable {family} processor: {exc}") from exc
    if not processor.chat_template:
        raise ModelLoadError(f"{path}: the processor has no chat template")
    return processor


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    trainable: bool = False,
    quantization: Any = None,
) -> LoadedModel:
    """Load a local checkpoint of a supported family (never downloads anything).

    ``dtype`` is ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    ``quantization`` is a transformers quantization config (QLoRA's 4-bit). The model is in
    eval mode unless ``trainable``.
    """
    path = Path(path)
    family = detect_family(path)
    if dtype != "auto" and dtype not in _DTYPES:
        raise ModelLoadError(f"{path}: unknown dtype {dtype!r} (auto, {', '.join(_DTYPES)})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"{path}: device {device!r} asked for, but CUDA is not available")
    processor = load_processor(path, family)
    torch_dtype: Any = "auto" if dtype == "auto" else _DTYPES[dtype]
    try:  # device_map loads the weights straight onto the device
        model = _MODEL_CLASSES[family].from_pretrained(
            str(path),
            local_files_only=True,
            dtype=torch_dtype,
            device_map=device,
            quantization_config=quantization,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot load {family} model weights: {exc}") from exc
    model.train(trainable)
    return LoadedModel(model=model, processor=processor, family=family, path=path)


def end_of_turn_id(processor: Any, family: Family) -> int:
    """The token that ends an assistant turn (training target; stops generation)."""
    tokenizer = processor.tokenizer
    if family == "qwen2_5_vl":
        token_id = tokenizer.convert_tokens_to_ids(QWEN_END_OF_TURN)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise EncodingError(f"the tokenizer has no {QWEN_END_OF_TURN} token")
        return int(token_id)
    if tokenizer.eos_token_id is None:
        raise EncodingError("the tokenizer has no end-of-sequence token")
    return int(tokenizer.eos_token_id)


def _process(
    processor: Any, messages: list[dict[str, Any]], images: list[Image.Image], generation: bool
) -> dict[str, torch.Tensor]:
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    batch = processor(text=[text], images=images or None, return_tensors="pt")
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


def encode(
    source: LoadedModel | Any,
    family: Family,
    prompt: Prompt,
    images: Sequence[Image.Image],
    answer: str | None = None,
) -> Encoded:
    """Encode a prompt and its clip (and, for training, the answer) for ``family``.

    ``source`` is a :class:`LoadedModel` or a processor; ``images[i]`` is frame ``i`` of the
    clip. Without ``answer`` the result ends with the generation prompt. With it, the answer
    turn is appended and cut right after its end-of-turn token, so ``input_ids[answer_start:]``
    are exactly the answer tokens plus the end of turn: the tokens a model learns to generate.
    """
    processor = source.processor if isinstance(source, LoadedModel) else source
    if isinstance(source, LoadedModel) and source.family != family:
        raise EncodingError(f"model is {source.family}, asked to encode for {family}")
    if len(images) != prompt.n_images:
        raise EncodingError(f"prompt has {prompt.n_images} frames, got {len(images)} images")
    ordered = [images[p.index] for p in prompt.parts if isinstance(p, ImagePart)]
    inputs = _process(processor, prompt.hf_messages(answer), ordered, generation=answer is None)
    image_token_id = int(processor.image_token_id)
    if answer is None:
        return Encoded(inputs, None, _count(inputs, image_token_id))

    prompt_ids = _process(processor, prompt.hf_messages(), ordered, generation=True)["input_ids"]
    ids = inputs["input_ids"]
    start = prompt_ids.shape[1]
    if ids.shape[1] <= start or not torch.equal(ids[0, :start], prompt_ids[0]):
        raise EncodingError(
            "the chat template does not render the prompt as a token prefix of prompt + answer; "
            "answer tokens cannot be told apart (does the answer start with whitespace?)"
        )
    eot = end_of_turn_id(processor, family)
    hits = (ids[0, start:] == eot).nonzero()
    if len(hits) > 0:
        end = start + int(hits[0, 0]) + 1
        inputs = {k: v[:, :end] if k in _SEQUENCE_KEYS else v for k, v in inputs.items()}
    else:  # the template does not close the assistant turn: close it
        inputs = {k: _append(v, k, eot) if k in _SEQUENCE_KEYS else v for k, v in inputs.items()}
    return Encoded(inputs, start, _count(inputs, image_token_id))


def _append(value: torch.Tensor, key: str, eot: int) -> torch.Tensor:
    fill = eot if key == "input_ids" else (1 if key == "attention_mask" else 0)
    return torch.cat([value, value.new_full((value.shape[0], 1), fill)], dim=1)


def _count(inputs: dict[str, torch.Tensor], image_token_id: int) -> int:
    return int((inputs["input_ids"] == image_token_id).sum())


def labels_for(encoded: Encoded, ignore_index: int = -100) -> torch.Tensor:
    """Training labels: ``ignore_index`` everywhere except the answer and its end of turn."""
    if encoded.answer_start is None:
        raise EncodingError("labels need an encoding with an answer (answer_start is None)")
    labels = encoded.input_ids.clone()
    labels[:, : encoded.answer_start] = ignore_index
    return labels


def collate(
    items: Sequence[Encoded], pad_token_id: int, ignore_index: int = -100
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A training batch from answer encodings: right-padded inputs and their labels.

    Sequence tensors are padded (``pad_token_id``; mask and type ids 0; labels
    ``ignore_index``); image tensors (``pixel_values``, ``image_grid_thw``) are concatenated
    in sample order, which is how both families take several images.
    """
    batch = _stack(items, pad_token_id, left=False)
    length = batch["input_ids"].shape[1]
    labels = torch.cat(
        [_pad(labels_for(item, ignore_index), length, ignore_index) for item in items]
    )
    return batch, labels


def generation_batch(items: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompt encodings (no answer) as one generation batch: sequences padded on the left,
    so every row's answer starts at the same position (``pad_token_id``; mask and type ids
    0); image tensors concatenated in row order, as :func:`collate` does."""
    return _stack(items, pad_token_id, left=True)


def _stack(items: Sequence[Encoded], pad_token_id: int, *, left: bool) -> dict[str, torch.Tensor]:
    """Encodings as one batch: sequence tensors padded to the longest (on the left or the
    right), image tensors concatenated in row order."""
    if not items:
        raise EncodingError("cannot collate an empty batch")
    keys = items[0].inputs.keys()
    if any(item.inputs.keys() != keys for item in items):
        raise EncodingError("cannot collate encodings with different inputs (frames in some only?)")
    length = max(item.input_ids.shape[1] for item in items)
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [item.inputs[key] for item in items]
        if key in _SEQUENCE_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.cat([_pad(value, length, fill, left=left) for value in values])
        else:
            batch[key] = torch.cat(values)
    return batch


def _pad(value: torch.Tensor, length: int, fill: int, *, left: bool = False) -> torch.Tensor:
    pad = value.new_full((value.shape[0], length - value.shape[1]), fill)
    return torch.cat([pad, value] if left else [value, pad], dim=1)


def _vision_prefix(family: Family) -> tuple[str, str]:
    """(vision tower parameter prefix, trainable part inside it or "")."""
    if family == "qwen2_5_vl":
        return "model.visual.", "model.visual.merger."
    return "model.vision_tower.", ""


def vision_parameters(model: Any, family: Family) -> list[tuple[str, torch.nn.Parameter]]:
    """The vision tower's and its projector's (LLaVA) / merger's (Qwen) named parameters."""
    tower, _ = _vision_prefix(family)
    prefixes = (tower,) if family == "qwen2_5_vl" else (tower, "model.multi_modal_projector.")
    return [(n, p) for n, p in model.named_parameters() if n.startswith(prefixes)]


def freeze_vision(model: Any, family: Family) -> None:
    """Freeze the vision tower; the projector (LLaVA) / merger (Qwen) and the LLM train."""
    tower, keep = _vision_prefix(family)
    found = False
    for name, param in model.named_parameters():
        in_tower = name.startswith(tower) and not (keep and name.startswith(keep))
        found = found or in_tower
        param.requires_grad_(not in_tower)
    if not found:
        raise ValueError(f"no {family} vision tower parameters under '{tower}' in the model")


def lora_target_modules(model: Any, family: Family) -> list[str]:
    """Full names of the language model's linear layers (attention and MLP; no vision, no
    lm_head); full names, because the vision tower reuses names such as ``mlp.up_proj``."""
    prefix = "model.language_model."
    names = [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, torch.nn.Linear)
    ]
    if not names:
        raise ValueError(f"no {family} language-model linear layers under '{prefix}'")
    return names
