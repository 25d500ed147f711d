"""The local engine on a real (tiny, untrained) Qwen2.5-VL checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import EngineError, GenerationOptions, complete
from lavia_live.engines.local import LocalEngine
from lavia_live.models.families import encode
from training.models.tiny import build_tiny_qwen2_5_vl, task_corpus

TASK = TaskLibrary.load().require("demo_oil_change")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "m"
    return build_tiny_qwen2_5_vl(
        out, task_corpus([TASK]), hidden_size=128, layers=2, vision_hidden=64, vision_depth=1
    )


def jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (20 * i % 256, 90, 200 - 9 * i)).save(out, "JPEG")
    return out.getvalue()


async def test_stream_equals_greedy_generate(model_dir: Path) -> None:
    engine = LocalEngine(model_dir)
    prompt = build_guidance_prompt(TASK, 4)
    frames = [jpeg(i) for i in range(4)]
    options = GenerationOptions(max_tokens=12)
    pieces = [p async for p in engine.stream(prompt, frames, options)]
    loaded = engine.loaded
    images = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames]
    inputs = encode(loaded, loaded.family, prompt, images).inputs
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = loaded.processor.tokenizer.decode(
        out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert "".join(pieces) == expected
    await engine.aclose()


async def test_bad_frames_and_missing_model_are_engine_errors(
    model_dir: Path, tmp_path: Path
) -> None:
    engine = LocalEngine(model_dir)
    with pytest.raises(EngineError, match="frame 1 is not a decodable image"):
        await complete(
            engine, build_guidance_prompt(TASK, 2), [jpeg(0), b"not a jpeg"], GenerationOptions()
        )
    with pytest.raises(EngineError, match="2 frames"):
        await complete(engine, build_guidance_prompt(TASK, 2), [jpeg(0)], GenerationOptions())
    with pytest.raises(EngineError, match="does not exist"):
        LocalEngine(tmp_path / "nothing")
