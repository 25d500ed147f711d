"""Sentences out of streamed text, so speech can start before an answer is complete.

:class:`SentenceSplitter` takes the pieces of a streamed answer as they come and gives back
each sentence once it is complete: at ``.``, ``!`` or ``?`` followed by white space, or at a
line break. A full stop after a known abbreviation, a number ("1.") or a single letter does
not end a sentence; a stretch without any end grows to at most ``max_chars`` and is then cut
at a comma or a space, so a run-on answer is still spoken while it streams. With
``first_clause`` the first piece given out may be a clause, ending at a colon or semicolon
followed by white space ("Next: ..."), so the voice starts a sentence's time sooner; the
model writes the rest while the clause is spoken.
"""

from __future__ import annotations

import re

__all__ = ["SentenceSplitter", "speakable", "split_sentences"]

_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n+")
_CLAUSE = re.compile(r"[:;](?=\s)")
_LAST_WORD = re.compile(r"(\S+)[.!?]+[\"')\]]*$")
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "etc", "vs", "approx", "mr", "mrs", "ms", "dr", "st", "no", "fig", "min"}
)
_MARKUP = re.compile(r"[*_#`>|]+")


def speakable(text: str) -> str:
    """``text`` without markdown symbols and with single spaces: what a voice should read."""
    return " ".join(_MARKUP.sub(" ", text).split())


def _ends_sentence(chunk: str) -> bool:
    """Whether the full stop (or ! ?) that ends ``chunk`` ends a sentence."""
    if chunk.endswith("\n"):
        return True
    match = _LAST_WORD.search(chunk.rstrip())
    if match is None:
        return True
    if not chunk.rstrip().rstrip("\"')]").endswith("."):
        return True  # ! and ? always end one
    word = match.group(1).lower().lstrip("(\"'")
    if word in _ABBREVIATIONS or word.isdigit():
        return False
    return not (len(word) == 1 and word.isalpha())


class SentenceSplitter:
    """Feed it streamed pieces; it returns complete sentences (already :func:`speakable`)."""

    def __init__(self, max_chars: int = 200, *, first_clause: bool = False) -> None:
        if max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, got {max_chars}")
        self.max_chars = max_chars
        self._buffer = ""
        self._clause = first_clause  # nothing given out yet: a clause may end the first

    @property
    def pending(self) -> str:
        """Text received that is not part of a sentence given out yet."""
        return self._buffer

    def feed(self, piece: str) -> list[str]:
        """Add a piece of the stream; the sentences it completed, in order."""
        self._buffer += piece
        return self._take(final=False)

    def flush(self) -> list[str]:
        """The stream ended: the rest, as a sentence if it holds any words."""
        return self._take(final=True)

    def _take(self, final: bool) -> list[str]:
        out: list[str] = []
        start = 0
        if self._clause:
            clause = _CLAUSE.search(self._buffer)
            sentence = next(
                (m for m in _BOUNDARY.finditer(self._buffer) if _ends_sentence(
                    self._buffer[: m.end()])), None
            )  # fmt: skip
            if clause is not None and (sentence is None or clause.end() < sentence.end()):
                self._emit(self._buffer[: clause.end()], out)
                start = clause.end()
        for match in _BOUNDARY.finditer(self._buffer, start):
            chunk = self._buffer[start : match.end()]
            if _ends_sentence(chunk):
                self._emit(chunk, out)
                start = match.end()
        rest = self._buffer[start:]
        while len(rest) > self.max_chars:
            cut = _cut_point(rest, self.max_chars)
            self._emit(rest[:cut], out)
            rest = rest[cut:]
        if final:
            self._emit(rest, out)
            rest = ""
        self._buffer = rest
        return out

    def _emit(self, chunk: str, out: list[str]) -> None:
        text = speakable(chunk)
        if any(c.isalnum() for c in text):
            out.append(text)
            self._clause = False


def _cut_point(text: str, limit: int) -> int:
    """Where to cut a stretch without sentence ends: after the last comma (or else space)
    before ``limit``; at ``limit`` when there is neither."""
    for mark in (", ", "; ", " "):
        at = text.rfind(mark, 0, limit)
        if at > limit // 3:
            return at + len(mark)
    return limit


def split_sentences(text: str, max_chars: int = 200, *, first_clause: bool = False) -> list[str]:
    """All sentences of a complete text (see :class:`SentenceSplitter`)."""
    splitter = SentenceSplitter(max_chars, first_clause=first_clause)
    return splitter.feed(text) + splitter.flush()
