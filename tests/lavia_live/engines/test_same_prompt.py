"""Same prompt everywhere (DESIGN.md, "The contract between training and serving"): for one
clip of a dataset built by the real pipeline, the messages the live session's prompt makes
each engine send equal what the training collator builds for that clip: text, image order,
image pixels.

- Training: :class:`training.train.data.RecordDataset` (the record's human turn parsed back
  into a prompt, its frame files, the answer) as ``lavia train`` batches it.
- Local engine: the embedded model's :class:`LocalEngine` streaming guidance for the prompt a
  live session builds (``build_guidance_prompt``) and the clip's JPEG bytes.
- OpenAI-compatible engine: the request the loopback server receives for the same call.

Both the local engine and the collator hand the model family's processor chat messages and
PIL images through ``families._process``, which the test records. Nothing re-encodes a
frame: the data URLs carry the record's JPEG files byte for byte, and every path decodes
them with PIL to the same pixels.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.records import iter_records
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import GenerationOptions, Usage, complete
from lavia_live.engines.factory import open_engine
from lavia_live.engines.local import LocalEngine
from lavia_live.models import EMBEDDED, EMBEDDED_FRAME_MAX_SIDE, families
from tests.openai_server import OpenAIServer
from training.config import PipelineSettings
from training.data.build import build_dataset
from training.demo.render import DemoSpec, render_demo_video
from training.train.data import Example, RecordDataset, load_examples

TASK = TaskLibrary.load().require("demo_oil_change")


@pytest.fixture(scope="module")
def clip_record(tmp_path_factory: pytest.TempPathFactory) -> Example:
    """The record with the most frames of a demo video built into a dataset at the embedded
    model's frame size, as ``lavia data build`` writes it."""
    root = tmp_path_factory.mktemp("same-prompt")
    spec = DemoSpec(min_step_s=2.0, max_step_s=3.0, narration=False)
    render_demo_video(TASK, 11, root / "videos", spec)
    settings = PipelineSettings.model_validate(
        {
            "data": {
                "annotate": {"annotator": "oracle"},
                "extract": {"clip_hop": 4, "max_side": EMBEDDED_FRAME_MAX_SIDE},
            }
        }
    )
    asyncio.run(build_dataset([root / "videos"], root / "ds", settings))
    records = root / "ds" / "records.jsonl"
    best = max(iter_records(records), key=lambda r: len(r.image))
    (example,) = [e for e in load_examples([records]) if e.record.id == best.id]
    return example


Call = tuple[list[dict[str, Any]], list[np.ndarray[Any, Any]], bool]


@pytest.fixture
def processor_calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every (messages, images as pixel arrays, generation prompt) a processor is given."""
    calls: list[Call] = []
    process = families._process

    def recording(
        processor: Any, messages: list[dict[str, Any]], images: list[Image.Image], generation: bool
    ) -> dict[str, Any]:
        calls.append((messages, [np.asarray(i) for i in images], generation))
        return process(processor, messages, images, generation)

    monkeypatch.setattr(families, "_process", recording)
    return calls


def frames_of(example: Example) -> list[bytes]:
    return [(example.root / p).read_bytes() for p in example.record.image]


def pixels(jpeg: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(jpeg)) as img:
        return np.asarray(img.convert("RGB"))


def test_every_engine_sends_what_the_training_collator_builds(
    clip_record: Example, processor_calls: list[Call]
) -> None:
    example = clip_record
    frames = frames_of(example)
    n = len(frames)
    assert n >= 4
    live_prompt = build_guidance_prompt(TASK, n)  # what a live session asks for this clip

    # Training: the collator's example (prompt + answer, then the prompt alone: its prefix).
    engine = open_engine(EMBEDDED, cpu_threads=1)
    assert isinstance(engine, LocalEngine)
    loaded = engine.loaded
    dataset = RecordDataset([example], loaded.processor, loaded.family)
    encoded = dataset[0]
    assert encoded.answer_start is not None
    (with_answer, train_images, gen), (train_messages, train_prompt_images, _) = processor_calls
    assert not gen and with_answer[0] == train_messages[0] and len(with_answer) == 2
    assert with_answer[1]["role"] == "assistant"
    processor_calls.clear()

    # The local engine, with the prompt a live session builds and the clip's JPEG bytes.
    usage = Usage()
    answer = asyncio.run(
        complete(engine, live_prompt, frames, GenerationOptions(max_tokens=48, usage=usage))
    )
    assert answer
    ((local_messages, local_images, local_gen),) = processor_calls
    assert local_gen
    assert local_messages == train_messages  # text and image positions
    assert len(local_images) == len(train_images) == n
    for k in range(n):  # image order and pixels, exactly
        assert np.array_equal(local_images[k], train_images[k])
        assert np.array_equal(train_prompt_images[k], train_images[k])
        assert np.array_equal(local_images[k], pixels(frames[k]))
    # The embedded model reports its own token counts: the prompt the collator encoded.
    assert usage.requests == 1
    assert usage.prompt_tokens == encoded.answer_start and usage.completion_tokens > 0

    # The OpenAI-compatible engine: the request as the server receives it.
    async def over_http() -> list[dict[str, Any]]:
        async with OpenAIServer() as server:
            remote = open_engine(server.base_url, api_model=server.model_id, api_key_env="")
            try:
                await complete(remote, live_prompt, frames, GenerationOptions(max_tokens=48))
            finally:
                await remote.aclose()
            (request,) = server.requests
            return request.content_parts()

    parts = asyncio.run(over_http())
    (user,) = train_messages
    assert user["role"] == "user"
    assert [p["type"] for p in parts] == [
        "image_url" if p["type"] == "image" else "text" for p in user["content"]
    ]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    assert texts == [p["text"] for p in user["content"] if p["type"] == "text"]
    sent = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert all(url.startswith("data:image/jpeg;base64,") for url in sent)
    jpegs = [base64.b64decode(url.split(",", 1)[1]) for url in sent]
    assert jpegs == frames  # the record's JPEG files, byte for byte, in order
    for k in range(n):
        assert np.array_equal(pixels(jpegs[k]), train_images[k])


def test_the_record_prompt_is_the_live_prompt(clip_record: Example) -> None:
    """The record's human turn is the prompt a live session builds for a clip this long."""
    record = clip_record.record
    assert record.prompt_text == build_guidance_prompt(TASK, len(record.image)).llava_text()
