"""Model families on real tiny checkpoints: load, encode, labels, train/generate, freeze, LoRA."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image

from lavia_live.contract.guidance import Guidance
from lavia_live.contract.prompt import Prompt, build_guidance_prompt
from lavia_live.contract.tasks import TaskContext, TaskLibrary
from lavia_live.models import (
    EncodingError,
    Family,
    LoadedModel,
    ModelLoadError,
    collate,
    detect_family,
    encode,
    freeze_vision,
    labels_for,
    load_model,
    lora_target_modules,
)
from training.models.tiny import build_tiny_llava, build_tiny_qwen2_5_vl, task_corpus

FAMILIES: tuple[Family, ...] = ("qwen2_5_vl", "llava")
END_OF_TURN = {"qwen2_5_vl": "<|im_end|>", "llava": "<|eot_id|>"}
GENERATION_PROMPT = {
    "qwen2_5_vl": "<|im_end|>\n<|im_start|>assistant\n",
    "llava": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
}
TOKENS_PER_FRAME = 16  # qwen: 112x112 px -> 8x8 patches, 2x2 merged; llava: 56 px / 14 px patches


@pytest.fixture(scope="module")
def task() -> TaskContext:
    return TaskLibrary.load()["demo_oil_change"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[Family, Path]:
    texts = task_corpus(TaskLibrary.load().values())
    root = tmp_path_factory.mktemp("models")
    return {
        "qwen2_5_vl": build_tiny_qwen2_5_vl(root / "qwen", texts, hidden_size=128, layers=2),
        "llava": build_tiny_llava(root / "llava", texts),
    }


@pytest.fixture(scope="module")
def loaded(model_dirs: dict[Family, Path]) -> dict[Family, LoadedModel]:
    return {family: load_model(path) for family, path in model_dirs.items()}


@pytest.fixture(scope="module")
def frames() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(15)]


@pytest.fixture(scope="module")
def prompt(task: TaskContext) -> Prompt:
    return build_guidance_prompt(task, 15)


@pytest.fixture(scope="module")
def answer(task: TaskContext) -> str:
    return Guidance(task.steps[2], task.steps[3], "The oil pan is not under the engine.").to_text()


def test_detect_family(model_dirs: dict[Family, Path], loaded: dict[Family, LoadedModel]) -> None:
    for family, path in model_dirs.items():
        assert detect_family(path) == family
        assert loaded[family].family == family
        assert not loaded[family].model.training


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_masks_everything_but_the_answer(
    family: Family,
    loaded: dict[Family, LoadedModel],
    prompt: Prompt,
    frames: list[Image.Image],
    answer: str,
) -> None:
    model = loaded[family]
    tokenizer = model.processor.tokenizer
    encoded = encode(model, family, prompt, frames, answer)
    ids = encoded.input_ids
    assert ids.shape[0] == 1 and encoded.answer_start is not None
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert key in encoded.inputs
    if family == "qwen2_5_vl":  # transformers v5 needs it for the 3-D (mrope) positions
        assert encoded.inputs["mm_token_type_ids"].shape == ids.shape
        assert encoded.inputs["image_grid_thw"].tolist() == [[1, 8, 8]] * 15

    # one run of image tokens per frame, in order
    is_image = (ids[0] == model.processor.image_token_id).tolist()
    runs = [i for i in range(len(is_image)) if is_image[i] and (i == 0 or not is_image[i - 1])]
    assert len(runs) == 15
    assert encoded.n_image_tokens == sum(is_image) == 15 * TOKENS_PER_FRAME
    assert max(runs) < encoded.answer_start

    labels = labels_for(encoded)
    assert labels.shape == ids.shape
    start = encoded.answer_start
    for i, (token, label) in enumerate(zip(ids[0].tolist(), labels[0].tolist(), strict=True)):
        assert label == (-100 if i < start else token), f"position {i}"
    unmasked = [
        t for t, label in zip(ids[0].tolist(), labels[0].tolist(), strict=True) if label != -100
    ]
    assert tokenizer.decode(unmasked) == answer + END_OF_TURN[family]
    # nothing of the prompt is trained: the masked part ends with the generation prompt
    assert tokenizer.decode(ids[0, :start]).endswith(GENERATION_PROMPT[family])

    # what is served is exactly what was trained: the prompt-only encoding is the prefix
    served = encode(model, family, prompt, frames)
    assert served.answer_start is None
    assert torch.equal(served.input_ids[0], ids[0, :start])
    assert torch.equal(served.inputs["pixel_values"], encoded.inputs["pixel_values"])


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_loss_and_generate(
    family: Family,
    loaded: dict[Family, LoadedModel],
    prompt: Prompt,
    frames: list[Image.Image],
    answer: str,
) -> None:
    model = loaded[family]
    encoded = encode(model, family, prompt, frames, answer)
    with torch.no_grad():
        loss = model.model(**encoded.inputs, labels=labels_for(encoded)).loss
    assert math.isfinite(loss.item())
    assert loss.item() > 0

    served = encode(model, family, prompt, frames)
    with torch.no_grad():
        out = model.model.generate(**served.inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out[0, : served.input_ids.shape[1]], served.input_ids[0])
    assert 1 <= out.shape[1] - served.input_ids.shape[1] <= 4


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_gives_identical_logits(
    family: Family,
    loaded: dict[Family, LoadedModel],
    prompt: Prompt,
    frames: list[Image.Image],
    tmp_path: Path,
) -> None:
    model = loaded[family]
    model.model.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert type(again.processor) is type(model.processor)
    first = encode(model, family, prompt, frames)
    second = encode(again, family, prompt, frames)
    for key, value in first.inputs.items():
        assert torch.equal(value, second.inputs[key]), key
    with torch.no_grad():
        a = model.model(**first.inputs).logits
        b = again.model(**second.inputs).logits
    assert a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_vision_keeps_projector_and_llm_trainable(
    family: Family, model_dirs: dict[Family, Path]
) -> None:
    model = load_model(model_dirs[family], trainable=True).model
    assert model.training
    freeze_vision(model, family)
    tower = "model.visual." if family == "qwen2_5_vl" else "model.vision_tower."
    bridge = "model.visual.merger." if family == "qwen2_5_vl" else "model.multi_modal_projector."
    params = dict(model.named_parameters())
    assert any(n.startswith(bridge) for n in params)
    for name, param in params.items():
        frozen = name.startswith(tower) and not name.startswith(bridge)
        assert param.requires_grad is not frozen, name
    assert any(n.startswith("model.language_model.") and p.requires_grad for n, p in params.items())


# peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5.24 deprecates
PEFT_DEPRECATION = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"


@pytest.mark.filterwarnings(PEFT_DEPRECATION)
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_only_the_language_model(
    family: Family,
    model_dirs: dict[Family, Path],
    prompt: Prompt,
    frames: list[Image.Image],
    answer: str,
) -> None:
    loaded = load_model(model_dirs[family], trainable=True)
    targets = lora_target_modules(loaded.model, family)
    modules = dict(loaded.model.named_modules())
    n_layers = loaded.model.config.text_config.num_hidden_layers
    assert len(targets) == 7 * n_layers  # q, k, v, o, gate, up, down
    for name in targets:
        assert name.startswith("model.language_model.layers.")
        assert isinstance(modules[name], torch.nn.Linear)

    peft_model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    lora = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n and ".language_model." in n for n in lora)
    assert len(lora) == 2 * len(targets)
    encoded = encode(loaded, family, prompt, frames, answer)
    peft_model(**encoded.inputs, labels=labels_for(encoded)).loss.backward()
    grads = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert grads == lora


def test_encode_rejects_bad_input(
    loaded: dict[Family, LoadedModel], prompt: Prompt, frames: list[Image.Image], answer: str
) -> None:
    qwen = loaded["qwen2_5_vl"]
    with pytest.raises(EncodingError, match="15 frames, got 14"):
        encode(qwen, "qwen2_5_vl", prompt, frames[:14])
    with pytest.raises(EncodingError, match="model is qwen2_5_vl"):
        encode(qwen, "llava", prompt, frames)
    with pytest.raises(EncodingError, match="answer_start is None"):
        labels_for(encode(qwen, "qwen2_5_vl", prompt, frames))
    # a template whose generation prompt differs from how it renders the answer turn
    broken = copy.deepcopy(qwen.processor)
    broken.chat_template = broken.chat_template.replace(
        "<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant:\n{% endif %}"
    )
    assert broken.chat_template != qwen.processor.chat_template
    with pytest.raises(EncodingError, match="prefix"):
        encode(broken, "qwen2_5_vl", prompt, frames, answer)


def test_encode_prompt_without_frames(loaded: dict[Family, LoadedModel], task: TaskContext) -> None:
    qwen = loaded["qwen2_5_vl"]
    encoded = encode(qwen, "qwen2_5_vl", build_guidance_prompt(task, 0), [], "Current step: x")
    assert encoded.n_image_tokens == 0 and "pixel_values" not in encoded.inputs
    with torch.no_grad():
        assert math.isfinite(qwen.model(**encoded.inputs, labels=labels_for(encoded)).loss.item())


def test_load_errors_name_the_path(tmp_path: Path, model_dirs: dict[Family, Path]) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ModelLoadError, match="does not exist") as exc:
        load_model(missing)
    assert str(missing) in str(exc.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json") as exc:
        load_model(empty)
    assert str(empty) in str(exc.value)

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert' is not a supported family") as exc:
        detect_family(bert)
    assert str(bert) in str(exc.value)

    bare = tmp_path / "no_processor"
    bare.mkdir()
    config = (model_dirs["qwen2_5_vl"] / "config.json").read_text()
    (bare / "config.json").write_text(config)
    with pytest.raises(ModelLoadError, match="processor") as exc:
        load_model(bare)
    assert str(bare) in str(exc.value)

    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(model_dirs["llava"], dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load_model(model_dirs["llava"], device="cuda")


def test_bfloat16_model_takes_cast_inputs(
    model_dirs: dict[Family, Path], prompt: Prompt, frames: list[Image.Image], answer: str
) -> None:
    model = load_model(model_dirs["qwen2_5_vl"], dtype="bfloat16")
    assert model.model.dtype == torch.bfloat16
    encoded = encode(model, "qwen2_5_vl", prompt, frames, answer).to("cpu", torch.bfloat16)
    assert encoded.inputs["pixel_values"].dtype == torch.bfloat16
    assert encoded.input_ids.dtype == torch.long  # only floating tensors are cast
    with torch.no_grad():
        loss = model.model(**encoded.inputs, labels=labels_for(encoded)).loss
    assert math.isfinite(loss.item())


def test_published_qwen_layout_keeps_its_own_pixel_budget(
    model_dirs: dict[Family, Path], tmp_path: Path, prompt: Prompt
) -> None:
    """Qwen2.5-VL-7B-Instruct ships preprocessor_config.json (min/max_pixels) and
    chat_template.json instead of processor_config.json and chat_template.jinja."""
    folder = tmp_path / "published"
    shutil.copytree(model_dirs["qwen2_5_vl"], folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "processor_config.json").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    preprocessor = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    model = load_model(folder)
    assert model.processor.chat_template == template
    assert model.processor.image_processor.size["longest_edge"] == 12845056
    camera = [Image.new("RGB", (640, 480), (90, 90, 90))] * 15
    encoded = encode(model, "qwen2_5_vl", prompt, camera)
    assert encoded.inputs["image_grid_thw"][0].tolist() == [1, 34, 46]  # 476x644 px, no downscale
    assert encoded.n_image_tokens == 15 * 34 * 46 // 4


@pytest.mark.parametrize("family", FAMILIES)
def test_collated_batch_matches_single_samples(
    family: Family,
    loaded: dict[Family, LoadedModel],
    task: TaskContext,
    frames: list[Image.Image],
) -> None:
    model = loaded[family]
    short = encode(model, family, build_guidance_prompt(task, 2), frames[:2], "Current step: x")
    long = encode(
        model, family, build_guidance_prompt(task, 3), frames[2:5], "Current step: a b c d"
    )
    pad = model.processor.tokenizer.pad_token_id
    inputs, labels = collate([short, long], pad)
    assert inputs["input_ids"].shape == labels.shape == (2, long.input_ids.shape[1])
    assert (labels[0, short.input_ids.shape[1] :] == -100).all()
    with torch.no_grad():
        batched = model.model(**inputs).logits
        for row, item in enumerate((short, long)):
            single = model.model(**item.inputs).logits[0]
            assert torch.allclose(batched[row, : single.shape[0]], single, atol=1e-4)
    with pytest.raises(EncodingError, match="different inputs"):
        collate([short, encode(model, family, build_guidance_prompt(task, 0), [], "x")], pad)
