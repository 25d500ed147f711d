"""Sentences out of streamed text: complete ones come out as soon as they are complete."""

from __future__ import annotations

import re

import pytest

from lavia_live.speech.sentences import SentenceSplitter, speakable, split_sentences

ANSWER = (
    "Loosen the drain plug with the ratchet, e.g. a 12 mm socket. Then let the old oil drain "
    "into the pan! Is the pan under the engine? Step 2. comes after step 1.\nRefit the plug."
)
EXPECTED = [
    "Loosen the drain plug with the ratchet, e.g. a 12 mm socket.",
    "Then let the old oil drain into the pan!",
    "Is the pan under the engine?",
    "Step 2. comes after step 1.",
    "Refit the plug.",
]


def pieces_of(text: str, how: str) -> list[str]:
    if how == "words":  # as the engines stream: a word with its leading space
        return re.findall(r"\s*\S+|\s+$", text)
    if how == "chars":
        return list(text)
    return [text]


@pytest.mark.parametrize("how", ["words", "chars", "whole"])
def test_streamed_pieces_give_the_same_sentences(how: str) -> None:
    splitter = SentenceSplitter()
    out: list[str] = []
    for piece in pieces_of(ANSWER, how):
        out += splitter.feed(piece)
    out += splitter.flush()
    assert out == EXPECTED


def test_a_sentence_comes_out_as_soon_as_the_next_piece_shows_it_ended() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Loosen the") == []
    assert splitter.feed(" drain plug.") == []  # could still be "plug.5" or an abbreviation
    assert splitter.feed(" Then") == ["Loosen the drain plug."]
    assert splitter.pending == " Then"
    assert splitter.feed(" drain it") == []
    assert splitter.flush() == ["Then drain it"]
    assert splitter.flush() == []


def test_run_on_text_is_cut_at_a_comma_or_space_before_the_limit() -> None:
    splitter = SentenceSplitter(max_chars=40)
    words = "first the pan, then the cap, then the plug, then the oil, then the dipstick and"
    out = []
    for piece in pieces_of(words, "words"):
        out += splitter.feed(piece)
    assert out, "a long stretch without a full stop is spoken while it streams"
    assert all(len(s) <= 40 for s in out)
    assert out[0] == "first the pan, then the cap,"
    assert " ".join(out + splitter.flush()) == words


def test_markup_and_empty_pieces_are_not_spoken() -> None:
    assert speakable("**Loosen** the `plug`  now") == "Loosen the plug now"
    assert split_sentences("... \n\n * \n") == []
    assert split_sentences("") == []
    assert split_sentences("Done") == ["Done"]
    with pytest.raises(ValueError, match="max_chars"):
        SentenceSplitter(max_chars=5)


def test_the_first_piece_may_be_a_clause_and_only_the_first() -> None:
    def streamed(text: str) -> list[str]:
        splitter, out = SentenceSplitter(first_clause=True), []
        for word in text.split(" "):
            out += splitter.feed(word + " ")
        return out + splitter.flush()

    assert streamed("Next: Unscrew the cap. Then: drain it.") == [
        "Next:",
        "Unscrew the cap.",
        "Then: drain it.",
    ]
    assert streamed("This is step 3 of 7; loosen it.") == ["This is step 3 of 7;", "loosen it."]
    assert streamed("It is 3:30. Then: go.") == ["It is 3:30.", "Then: go."]  # no space after
    assert streamed("Done. Next: go.") == ["Done.", "Next: go."]  # a sentence came first
    whole = SentenceSplitter(first_clause=True)  # all at once, as a held answer arrives
    assert whole.feed("Next: Drain the oil. ") == ["Next:", "Drain the oil."]
    assert split_sentences("Next: Drain the oil.") == ["Next: Drain the oil."]  # by default
