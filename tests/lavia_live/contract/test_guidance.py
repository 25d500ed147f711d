from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lavia_live.contract.guidance import Guidance, parse_guidance


@settings(max_examples=500)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    parsed = parse_guidance(text)
    assert parsed.raw == text
    assert parsed.status in ("ok", "partial", "unparsed")
    if parsed.status == "unparsed":
        assert parsed.guidance is None


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_arbitrary_json_never_raises(value: object) -> None:
    parse_guidance(json.dumps(value))
    parse_guidance(value)  # not even a string


step_texts = (
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=80)
    .map(lambda s: " ".join(s.split()).strip(" *_`\"'"))
    .filter(bool)
)


@settings(max_examples=200)
@given(step_texts, step_texts, st.one_of(st.none(), step_texts.filter(lambda s: len(s) > 4)))
def test_canonical_text_round_trips(current: str, nxt: str, warning: str | None) -> None:
    g = Guidance(current, nxt, warning)
    parsed = parse_guidance(g.to_text())
    assert parsed.ok
    assert parsed.guidance == g


def test_canonical_answer() -> None:
    text = "Current step: Loosen the drain plug.\nNext step: Drain the oil.\nWarning: none"
    parsed = parse_guidance(text)
    assert parsed.ok
    assert parsed.guidance == Guidance("Loosen the drain plug.", "Drain the oil.", None)
    assert parsed.guidance.to_text() == text


@pytest.mark.parametrize(
    "text",
    [
        "**Current step:** Loosen the drain plug.\n**Next step:** Drain the oil.\n**Warning:** The pan is missing.",
        "Sure! Here you go:\n- current: Loosen the drain plug.\n- next: Drain the oil.\n- mistake: The pan is missing.\nHope that helps.",
        '```json\n{"current_step": "Loosen the drain plug.", "next_step": "Drain the oil.", "warning": "The pan is missing."}\n```',
        '{"Current Step": "Loosen the drain plug.", "next-step": "Drain the oil.", "Mistake": "The pan is missing."}',
        "CURRENT STEP = Loosen the drain plug.\nNEXT STEP - Drain the oil.\nWARNING: The pan is missing.",
    ],
)
def test_tolerates_decoration_json_and_key_variants(text: str) -> None:
    parsed = parse_guidance(text)
    assert parsed.ok, text
    assert parsed.current_step == "Loosen the drain plug."
    assert parsed.next_step == "Drain the oil."
    assert parsed.warning == "The pan is missing."


@pytest.mark.parametrize("warning", ["none", "None.", "N/A", "no", "", "null"])
def test_no_warning_words(warning: str) -> None:
    parsed = parse_guidance(f"Current step: a\nNext step: b\nWarning: {warning}")
    assert parsed.ok and parsed.warning is None


def test_partial_and_unparsed() -> None:
    partial = parse_guidance("Next step: Drain the oil.")
    assert partial.status == "partial" and partial.next_step == "Drain the oil."
    assert partial.guidance is None
    garbage = parse_guidance("I see an engine. It is grey.")
    assert garbage.status == "unparsed" and garbage.raw == "I see an engine. It is grey."
    assert parse_guidance('{"current_step": null, "next_step": ""}').status == "unparsed"
    assert parse_guidance("").status == "unparsed"


def test_huge_fields_are_truncated() -> None:
    parsed = parse_guidance("Current step: " + "x" * 10_000 + "\nNext step: y")
    assert parsed.ok and len(parsed.current_step or "") == 500
