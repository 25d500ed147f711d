"""Tiny model builders: offline, deterministic, normal Hugging Face checkpoint folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor

from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.models import encode, load_model, load_processor
from training.models.tiny import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    build_qwen2_5_vl_processor,
    build_tiny_llava,
    build_tiny_qwen2_5_vl,
    task_corpus,
    train_tokenizer,
)

SMALL = {"hidden_size": 128, "layers": 2, "vision_hidden": 64, "vision_depth": 2}
FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "chat_template.jinja",
}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return task_corpus(TaskLibrary.load().values())


def test_same_seed_same_checkpoint(texts: list[str], tmp_path: Path) -> None:
    a = build_tiny_qwen2_5_vl(tmp_path / "a", texts, **SMALL)
    b = build_tiny_qwen2_5_vl(tmp_path / "b", texts, **SMALL)
    c = build_tiny_qwen2_5_vl(tmp_path / "c", texts, seed=1, **SMALL)
    assert {p.name for p in a.iterdir()} >= FILES
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    weights_c = load_file(c / "model.safetensors")
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
    for name in FILES - {"model.safetensors"}:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # a plain Qwen2.5-VL folder: the stock processor class, no remote code
    processor_config = json.loads((a / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "Qwen2_5_VLProcessor"
    tokenizer_config = json.loads((a / "tokenizer_config.json").read_text())
    assert tokenizer_config["processor_class"] == "Qwen2_5_VLProcessor"
    assert "auto_map" not in json.loads((a / "config.json").read_text())


def test_default_size(texts: list[str], tmp_path: Path) -> None:
    path = build_tiny_qwen2_5_vl(tmp_path / "tiny", texts)
    model = load_model(path).model
    n_params = sum(p.numel() for p in model.parameters())
    assert 8_000_000 < n_params < 16_000_000
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert (text.hidden_size, text.num_hidden_layers) == (384, 6)
    assert model.config.vision_config.hidden_size == 192
    assert model.config.vision_config.out_hidden_size == 384
    assert model.generation_config.eos_token_id == load_processor(
        path
    ).tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_tokenizer_is_byte_level_with_qwen_specials(texts: list[str]) -> None:
    tokenizer = train_tokenizer(texts, vocab_size=1000)
    assert len(tokenizer) <= 1000
    for token in QWEN_SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    for text in (
        "Loosen the drain plug.",
        "Ölwechsel: 0,6 l — 🛢️ ok?\n\tdone",
        "19.5 fl oz (577 ml)",
    ):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    # the steps of the tasks are cheap to say: well under one token per character
    step = "Loosen the drain plug with the ratchet."
    assert len(tokenizer.encode(step, add_special_tokens=False)) < len(step) / 3
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.chat_template == QWEN2_5_VL_CHAT_TEMPLATE


def _tokens_for(processor: object, width: int, height: int) -> int:
    image = Image.new("RGB", (width, height), (120, 60, 30))
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"]  # type: ignore[attr-defined]
    return int(grid.prod()) // 4


def test_image_pixels_sets_the_frame_budget(texts: list[str]) -> None:
    tokenizer = train_tokenizer(texts[:10], vocab_size=500)
    small = build_qwen2_5_vl_processor(tokenizer, 112 * 112)
    assert _tokens_for(small, 112, 112) == 16
    assert _tokens_for(small, 640, 480) <= 16  # live camera frames shrink to the same budget
    default = build_qwen2_5_vl_processor(tokenizer, None)
    assert default.image_processor.size["longest_edge"] == 28 * 28 * 1280
    assert _tokens_for(default, 640, 480) > 16 * 10


def test_llava_folder_loads_with_the_stock_auto_processor(texts: list[str], tmp_path: Path) -> None:
    path = build_tiny_llava(tmp_path / "llava", texts)
    stock = AutoProcessor.from_pretrained(path, local_files_only=True)
    ours = load_processor(path)
    assert type(stock) is type(ours)
    task = TaskLibrary.load()["demo_oil_change"]
    prompt = build_guidance_prompt(task, 3)
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)) for _ in range(3)]
    a = encode(stock, "llava", prompt, frames, "Current step: x")
    b = encode(ours, "llava", prompt, frames, "Current step: x")
    assert a.inputs.keys() == b.inputs.keys()
    assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
