from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lavia_live.contract.prompt import (
    IMAGE_TAG,
    ImagePart,
    TextPart,
    build_guidance_prompt,
    build_question_prompt,
    parse_llava_text,
    prompt_from_openai_messages,
    task_context_text,
)
from lavia_live.contract.tasks import TaskContext, TaskLibrary

DEMO = TaskLibrary.load()["demo_oil_change"]


def test_fixed_part_first_then_frames_in_order_then_request() -> None:
    prompt = build_guidance_prompt(DEMO, 15)
    assert prompt.parts[0] == TextPart(task_context_text(DEMO))
    assert [p.index for p in prompt.parts[1:16] if isinstance(p, ImagePart)] == list(range(15))
    assert isinstance(prompt.parts[-1], TextPart)
    assert "Current step:" in prompt.parts[-1].text
    assert prompt.n_images == 15


def test_prefix_is_identical_across_requests_of_a_task() -> None:
    """Prefix caches reuse the fixed part: it must not depend on clip, history or question."""
    a = build_guidance_prompt(DEMO, 15).openai_messages(["u"] * 15)
    b = build_question_prompt(DEMO, 7, "where is the plug?", ["x"]).openai_messages(["v"] * 7)
    assert a[0]["content"][0] == b[0]["content"][0]
    for step in DEMO.steps:
        assert step in a[0]["content"][0]["text"]
    assert DEMO.guideline in a[0]["content"][0]["text"]


def test_openai_messages_carry_image_urls_in_clip_order() -> None:
    prompt = build_guidance_prompt(DEMO, 3)
    urls = ["data:a", "data:b", "data:c"]
    content = prompt.openai_messages(urls)[0]["content"]
    assert [c["image_url"]["url"] for c in content if c["type"] == "image_url"] == urls
    with pytest.raises(ValueError, match="3 images"):
        prompt.openai_messages(urls[:2])


def test_hf_messages_match_and_add_the_answer_turn() -> None:
    prompt = build_question_prompt(DEMO, 2, "  Is the   cap off? ")
    messages = prompt.hf_messages(answer="Yes.")
    kinds = [c["type"] for c in messages[0]["content"]]
    assert kinds == ["text", "image", "image", "text"]
    assert "The person asks: Is the cap off?" in messages[0]["content"][-1]["text"]
    assert messages[1] == {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}


def test_llava_text_has_one_image_line_per_frame_and_round_trips() -> None:
    prompt = build_guidance_prompt(DEMO, 15, history=["Current step: Slide the oil pan"])
    text = prompt.llava_text()
    assert text.count(IMAGE_TAG) == 15
    assert (IMAGE_TAG + "\n") * 15 in text
    assert parse_llava_text(text) == prompt


@given(
    st.text(min_size=1).filter(lambda s: IMAGE_TAG not in s),
    st.lists(st.text().filter(lambda s: IMAGE_TAG not in s), max_size=3),
    st.integers(0, 15),
)
def test_round_trip_for_any_task_text(title: str, steps: list[str], n: int) -> None:
    task = TaskContext("t", title, tuple(steps), "guide")
    prompt = build_question_prompt(task, n, "why?")
    assert parse_llava_text(prompt.llava_text(), "question") == prompt


def test_original_lavia_layout_parses() -> None:
    value = f"{IMAGE_TAG}\n{IMAGE_TAG}\nWhat is next?"
    prompt = parse_llava_text(value)
    assert prompt.parts == (ImagePart(0), ImagePart(1), TextPart("What is next?"))


def test_task_steps_are_read_back_from_every_prompt() -> None:
    for prompt in (
        build_guidance_prompt(DEMO, 3),
        build_guidance_prompt(DEMO, 0),
        build_question_prompt(DEMO, 2, "what next?", ["now: a; next: b"]),
    ):
        assert prompt.task_steps() == DEMO.steps
        assert parse_llava_text(prompt.llava_text()).task_steps() == DEMO.steps
    bare = TaskContext(id="t", title="No list", guideline="Steps:\n1. not a list")
    assert build_guidance_prompt(bare, 1).task_steps() == ()


@pytest.mark.parametrize("n_frames", [0, 1, 15])
@pytest.mark.parametrize("kind", ["guidance", "question"])
def test_openai_messages_read_back_into_the_same_prompt(kind: str, n_frames: int) -> None:
    history = ["now: a; next: b"]
    prompt = (
        build_guidance_prompt(DEMO, n_frames, history)
        if kind == "guidance"
        else build_question_prompt(DEMO, n_frames, "Which step comes next?", history)
    )
    urls = [f"data:image/jpeg;base64,{i}" for i in range(n_frames)]
    for detail in (None, "low"):
        assert prompt_from_openai_messages(prompt.openai_messages(urls, detail)) == (prompt, urls)


def test_other_chats_are_read_as_one_turn() -> None:
    guidance = build_guidance_prompt(DEMO, 2).openai_messages(["u0", "u1"])[0]
    system = {"role": "system", "content": "Be brief."}
    prompt, urls = prompt_from_openai_messages([system, guidance])
    assert urls == ["u0", "u1"] and prompt.kind == "guidance"
    assert prompt.parts[0] == TextPart("Be brief.\n" + task_context_text(DEMO))
    assert prompt.task_steps() == DEMO.steps
    chat = [
        system,
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "text", "text": ""},
                                     {"type": "image_url", "image_url": {"url": "u"}}]},
        {"role": "assistant", "content": None},
    ]  # fmt: skip
    prompt, urls = prompt_from_openai_messages(chat)
    assert prompt.parts == (TextPart("Be brief.\nWhat is this?"), ImagePart(0))
    assert (prompt.kind, urls) == ("question", ["u"])
    bad = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    with pytest.raises(ValueError, match=r"messages\[0\].content\[0\]: expected"):
        prompt_from_openai_messages(bad)
    with pytest.raises(ValueError, match="a string or a list of parts"):
        prompt_from_openai_messages([{"role": "user", "content": 3}])
