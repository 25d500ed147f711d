"""The local engine on a real (tiny, untrained) Qwen2.5-VL checkpoint."""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lavia_live.contract.guidance import CURRENT_LABEL, TASK_COMPLETE, parse_guidance
from lavia_live.contract.prompt import build_guidance_prompt, build_question_prompt
from lavia_live.contract.tasks import TaskContext
from lavia_live.engines.base import EngineError, GenerationOptions, complete
from lavia_live.engines.local import LocalEngine
from lavia_live.engines.step_choice import StepLines, StepLinesProcessor, StepSlots
from lavia_live.models.families import encode, load_model, serving_dtype
from lavia_live.models.step_classifier import StepClassifier
from tests.lavia_live.engines.clips import COOKING, TASK
from training.models.tiny import build_tiny_qwen2_5_vl, task_corpus


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


@pytest.mark.parametrize("steps_only", [False, True])
async def test_stream_equals_greedy_generate(model_dir: Path, steps_only: bool) -> None:
    # unconstrained guidance, and questions always, stream what plain greedy decoding gives
    engine = LocalEngine(model_dir, steps_only=steps_only)
    prompt = (
        build_question_prompt(TASK, 4, "what now?")
        if steps_only
        else build_guidance_prompt(TASK, 4)
    )
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


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("task", [TASK, COOKING], ids=["trained task", "unseen task"])
async def test_guidance_names_only_the_prompts_steps(
    model_dir: Path, beams: int, task: TaskContext
) -> None:
    # an untrained model writes anything; held to the step lines it names the task's steps
    frames = [jpeg(i) for i in range(3)]
    options = GenerationOptions(max_tokens=60)
    free = await complete(
        LocalEngine(model_dir, steps_only=False), build_guidance_prompt(task, 3), frames, options
    )
    assert not parse_guidance(free).ok
    engine = LocalEngine(model_dir, beams=beams)
    answer = await complete(engine, build_guidance_prompt(task, 3), frames, options)
    parsed = parse_guidance(answer)
    assert parsed.current_step in task.steps, answer
    assert parsed.next_step in (*task.steps, TASK_COMPLETE), answer
    assert answer.startswith(f"Current step: {parsed.current_step}\nNext step: ")


def test_step_lines_allow_the_task_steps_only(model_dir: Path) -> None:
    tokenizer = LocalEngine(model_dir).loaded.processor.tokenizer
    lines = StepLines(tokenizer, COOKING.steps)

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def follows(text: str) -> bool:
        tokens = ids(text)
        return all(
            (allowed := lines.allowed(tokens[:i])) is None or tokens[i] in allowed
            for i in range(len(tokens))
        )

    assert follows("Current step: Heat the pan.\nNext step: The task is complete.\nWarning: none")
    assert follows("Current step: Fold it.\nNext step: Whisk the eggs.\nWarning: too hot")
    assert not follows("Current step: Heat the eggs.\nNext step: Fold it.\nWarning: none")
    assert not follows("Current step: Fold it.\nNext step: Slide the pan.\nWarning: none")
    assert not follows("Next step: Fold it.")
    head = ids("Current step: Fold it.\nNext step: Heat the pan.\nWarning:")
    assert lines.allowed(head) is None  # the warning is free text
    with pytest.raises(ValueError, match="no steps"):
        StepLines(tokenizer, ())


def test_step_slots_hold_the_step_after_a_label_to_the_task(model_dir: Path) -> None:
    tokenizer = LocalEngine(model_dir).loaded.processor.tokenizer
    slots = StepSlots(tokenizer, COOKING.steps)

    def follows(text: str) -> bool:
        tokens = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return all(
            (allowed := slots.allowed(tokens[:i])) is None or tokens[i] in allowed
            for i in range(len(tokens))
        )

    assert follows("You are on: Heat the pan. It is step 1 of 3.")
    assert follows("Next: Fold it.")
    assert follows("Next: The task is complete. This is the last step.")
    assert follows("Steps left after: Whisk the eggs. 1 step.")
    assert follows("Needed for: Fold it. You need a spatula. Next: Heat the pan.")
    assert follows("Yes: skipped: Whisk the eggs. It was step 2.")
    assert follows("No, nothing was missed so far.")  # no label: free text
    assert not follows("You are on: Heat the eggs.")
    assert not follows("Steps left after: Fold the pan.")
    assert not follows("You are on: The task is complete.")  # only the next step can be
    assert not follows("Yes, that is done. Next: Whisk the pan.")
    with pytest.raises(ValueError, match="no steps"):
        StepSlots(tokenizer, ())


def test_an_answer_naming_a_step_after_its_label_names_one_of_the_task(model_dir: Path) -> None:
    # the untrained model, made to start its answer with the label, must go on with a step
    engine = LocalEngine(model_dir)
    loaded, tokenizer = engine.loaded, engine.loaded.processor.tokenizer
    prompt = build_question_prompt(COOKING, 2, "which step is this?")
    images = [Image.open(io.BytesIO(jpeg(i))).convert("RGB") for i in range(2)]
    inputs = encode(loaded, loaded.family, prompt, images).inputs
    prompt_length = int(inputs["input_ids"].shape[1])
    label = torch.tensor([tokenizer(CURRENT_LABEL, add_special_tokens=False)["input_ids"]])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], label], dim=1)
    for key in ("attention_mask", "mm_token_type_ids"):  # the label is text, attended to
        if key in inputs:
            pad = torch.full_like(label, int(key == "attention_mask"))
            inputs[key] = torch.cat([inputs[key], pad], dim=1)
    processor = StepLinesProcessor(StepSlots(tokenizer, COOKING.steps), prompt_length)
    with torch.inference_mode():
        out = loaded.model.generate(
            **inputs, max_new_tokens=16, do_sample=False, logits_processor=[processor]
        )
    answer = tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)
    assert answer.startswith(f"{CURRENT_LABEL} ")
    assert any(answer.startswith(f"{CURRENT_LABEL} {step}") for step in COOKING.steps), answer


def _generating() -> bool:
    return any(t.name == "lavia-local-generate" for t in threading.enumerate())


@pytest.mark.parametrize("how", ["closed", "cancelled"])
async def test_a_stream_given_up_stops_its_generation(model_dir: Path, how: str) -> None:
    # an untrained model writes until max_tokens: 4000 tokens take far more than a second
    engine = LocalEngine(model_dir, steps_only=False)
    options = GenerationOptions(max_tokens=4000)
    frames = [jpeg(0), jpeg(1)]
    stream = engine.stream(build_question_prompt(TASK, 2, "what now?"), frames, options)
    if how == "closed":
        assert await anext(stream)
        given_up = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]
    else:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in stream:
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        given_up = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - given_up < 1.0
    assert not _generating()  # the thread was waited for


async def test_a_guidance_answer_cancelled_stops_its_generation(model_dir: Path) -> None:
    # held to the step lines, the untrained model still writes a free warning up to
    # max_tokens; cancelled, the answer ends at once and the engine takes the next request
    engine = LocalEngine(model_dir)
    prompt, frames = build_guidance_prompt(TASK, 2), [jpeg(0), jpeg(1)]
    task = asyncio.create_task(complete(engine, prompt, frames, GenerationOptions(max_tokens=4000)))
    await asyncio.sleep(0.5)
    given_up = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - given_up < 1.0
    answer = await complete(engine, prompt, frames, GenerationOptions(max_tokens=30))
    assert answer.startswith("Current step: ")


async def test_a_bfloat16_model_answers_alone_and_in_a_batch(model_dir: Path) -> None:
    frames = [jpeg(i) for i in range(3)]
    options = GenerationOptions(max_tokens=60)
    for max_batch in (1, 4):
        engine = LocalEngine(model_dir, dtype="bfloat16", max_batch=max_batch)
        assert engine.loaded.model.dtype == torch.bfloat16
        answers = await asyncio.gather(
            *(complete(engine, build_guidance_prompt(task, 3), frames, options)
              for task in (TASK, COOKING))
        )  # fmt: skip
        for task, answer in zip((TASK, COOKING), answers, strict=True):
            assert parse_guidance(answer).current_step in task.steps, answer
        await engine.aclose()


def test_auto_dtype_is_bfloat16_on_a_gpu_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serving_dtype("auto", "cpu") == "auto"  # the checkpoint's own
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert serving_dtype("auto", "cuda:0") == "bfloat16"
    assert serving_dtype("float32", "cuda") == "float32"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert serving_dtype("auto", "cuda") == "auto"


def classify_as(folder: Path, steps: tuple[str, ...], step: int | None) -> None:
    """Save a step classifier into ``folder`` that reads ``steps[step]`` from every frame
    (None: no step above its confidence threshold)."""
    classifier = StepClassifier.initial(load_model(folder), steps)
    with torch.no_grad():
        if step is not None:
            classifier.head.bias[step] = 20.0
    classifier.save(folder, {})


@pytest.mark.parametrize("max_batch", [1, 4])
async def test_a_step_classifier_writes_the_current_step_and_the_model_the_rest(
    model_dir: Path, tmp_path: Path, max_batch: int
) -> None:
    frames = [jpeg(i) for i in range(3)]
    options = GenerationOptions(max_tokens=60)
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    plain = LocalEngine(model_dir)
    assert plain.step_classifier is None
    own = parse_guidance(await complete(plain, build_guidance_prompt(TASK, 3), frames, options))
    for step in (0, len(TASK.steps) - 1):
        classify_as(folder, TASK.steps, step)
        engine = LocalEngine(folder, max_batch=max_batch)
        answers = await asyncio.gather(
            *(complete(engine, build_guidance_prompt(task, 3), frames, options)
              for task in (TASK, COOKING))
        )  # fmt: skip
        read, other = (parse_guidance(a) for a in answers)
        assert read.current_step == TASK.steps[step], answers[0]
        assert read.next_step in (*TASK.steps, TASK_COMPLETE), answers[0]
        # a task whose steps the classifier does not know: the model's own choice
        assert other.current_step in COOKING.steps, answers[1]
        await engine.aclose()
    # a classifier that is not sure gives the model's own answer
    classify_as(folder, TASK.steps, None)
    unsure = LocalEngine(folder)
    assert unsure.step_classifier is not None
    answer = await complete(unsure, build_guidance_prompt(TASK, 3), frames, options)
    assert parse_guidance(answer) == own


def test_a_broken_step_classifier_is_an_engine_error(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    classify_as(folder, TASK.steps, 0)
    (folder / "step_classifier.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(EngineError, match="unreadable step classifier"):
        LocalEngine(folder)
    classify_as(folder, COOKING.steps, 0)  # 3 outputs
    weights = load_file(str(folder / "step_classifier.safetensors"))
    weights["head.weight"] = weights["head.weight"][:, :7].contiguous()  # another model's
    save_file(weights, str(folder / "step_classifier.safetensors"))
    with pytest.raises(EngineError, match="does not fit this model"):
        LocalEngine(folder)
