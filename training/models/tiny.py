"""Build tiny models of real architectures, offline, with their own small tokenizers.

:func:`build_tiny_qwen2_5_vl` writes a randomly initialised Qwen2.5-VL (a few million
parameters) as a normal Hugging Face checkpoint folder: config, safetensors weights,
generation config, tokenizer, image processor config and the Qwen2.5-VL chat template. The
embedded default model is trained from it. :func:`build_tiny_llava` does the same for the
LLaVA family (CLIP vision tower + Llama language model), for tests of that family.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a given corpus (task
steps, prompts, answers), and the chat templates are written out in this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from lavia_live.contract.guidance import TASK_COMPLETE, Guidance
from lavia_live.contract.prompt import TextPart, build_guidance_prompt, build_question_prompt
from lavia_live.contract.tasks import TaskContext
from lavia_live.models.families import ImageQwen2_5_VLProcessor, qwen2_5_vl_frame_size

# Qwen2's pre-tokenizer split (GPT-4-like, single digits), before byte-level mapping.
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template of the Qwen2.5-VL instruct checkpoints.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<image>",
)

# Llama-3 style turns; images stay where the prompt puts them (in clip order), one "<image>"
# line per frame as in LLaVA records.
LLAVA_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Role words and fixed text the templates add, so BPE learns them as whole tokens.
_TEMPLATE_TEXT = ("system\n", "user\n", "assistant\n", "You are a helpful assistant.")


def task_corpus(tasks: Iterable[TaskContext]) -> list[str]:
    """Tokenizer training text for tasks: their context, prompts and canonical answers."""
    texts: list[str] = []
    for task in tasks:
        texts += [task.title, task.guideline, *task.steps]
        for prompt in (
            build_guidance_prompt(task, 15, history=task.steps[:1]),
            build_question_prompt(task, 15, "What do I do next?"),
        ):
            texts += [part.text for part in prompt.parts if isinstance(part, TextPart)]
        for current, nxt in zip(task.steps, task.steps[1:], strict=False):
            texts.append(Guidance(current, nxt).to_text())
        if task.steps:
            texts.append(Guidance(task.steps[-1], TASK_COMPLETE).to_text())
    return texts


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    *,
    special_tokens: Sequence[str] = QWEN_SPECIAL_TOKENS,
    chat_template: str = QWEN2_5_VL_CHAT_TEMPLATE,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) trained on ``texts``, Qwen2-style.

    The vocabulary holds at most ``vocab_size`` entries, special tokens first (ids 0, 1, ...);
    a small corpus gives a smaller vocabulary.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [*_TEMPLATE_TEXT, *texts]
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    fast: PreTrainedTokenizerFast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        eos_token=eos_token,
        pad_token=pad_token,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    return fast


def build_qwen2_5_vl_processor(tokenizer: Any, image_pixels: int | None = 112 * 112) -> Any:
    """A Qwen2.5-VL processor (PIL image backend) for ``tokenizer``.

    ``image_pixels`` caps the pixels of a frame after the processor's own resize (sides are
    rounded to multiples of 28; every 28x28 block is one LLM token): 112*112 gives 16 tokens
    for a square frame. ``None`` keeps the Qwen2.5-VL defaults (up to 1280 tokens a frame).
    """
    if image_pixels is None:
        image_processor = Qwen2VLImageProcessorPil()
    else:
        image_processor = Qwen2VLImageProcessorPil(size=qwen2_5_vl_frame_size(image_pixels))
    return ImageQwen2_5_VLProcessor(
        image_processor, tokenizer, chat_template=tokenizer.chat_template
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Temporal/height/width split of the rotary half-dimension (Qwen2.5-VL uses 16/24/24 of
    64 at head_dim 128); must sum to head_dim / 2."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def build_tiny_qwen2_5_vl(
    out_dir: Path,
    texts: Iterable[str],
    *,
    seed: int = 0,
    image_pixels: int = 112 * 112,
    hidden_size: int = 384,
    layers: int = 6,
    vision_hidden: int = 192,
    vision_depth: int = 4,
    vocab_size: int = 4096,
) -> Path:
    """Write a randomly initialised tiny Qwen2.5-VL checkpoint to ``out_dir``; return it."""
    if hidden_size % 64 or vision_hidden % 64:
        raise ValueError("hidden_size and vision_hidden must be multiples of 64 (head size)")
    tokenizer = train_tokenizer(texts, vocab_size)
    heads = hidden_size // 64
    ids = _token_ids(tokenizer)
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": _round_up(hidden_size * 8 // 3, 64),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 3) if heads % 3 == 0 else heads,
        "max_position_embeddings": 8192,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": _mrope_section(64),
        },
        "bos_token_id": None,
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "depth": vision_depth,
        "hidden_size": vision_hidden,
        "intermediate_size": _round_up(vision_hidden * 8 // 3, 64),
        "num_heads": vision_hidden // 64,
        "out_hidden_size": hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": list(range(1, vision_depth, 2)),
        "tokens_per_second": 2,
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation(model, eos=ids("<|im_end|>"), pad=ids("<|endoftext|>"))
    processor = build_qwen2_5_vl_processor(tokenizer, image_pixels)
    return _save(model, processor, out_dir)


def build_tiny_llava(out_dir: Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """Write a randomly initialised tiny LLaVA (CLIP vision + Llama) checkpoint; return it.

    56x56 frames, 14 px patches: 16 image tokens a frame (the CLS feature is dropped).
    """
    tokenizer = train_tokenizer(
        texts,
        2048,
        special_tokens=LLAVA_SPECIAL_TOKENS,
        chat_template=LLAVA_CHAT_TEMPLATE,
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )
    ids = _token_ids(tokenizer)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=ids("<|eot_id|>"),
        pad_token_id=ids("<|end_of_text|>"),
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    _set_generation(model, eos=ids("<|eot_id|>"), pad=ids("<|end_of_text|>"))
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
    )
    processor = LlavaProcessor(  # type: ignore[no-untyped-call]
        image_processor,
        tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return _save(model, processor, out_dir)


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> Callable[[str], int]:
    def token_id(token: str) -> int:
        value = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(value, int) or value == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token} token")
        return value

    return token_id


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _set_generation(model: Any, *, eos: int, pad: int) -> None:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = None


def _save(model: Any, processor: Any, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
