"""Decoding that names only the task's steps (in-process models).

The guidance prompt asks for the step texts from the task's list. A small model decides a
step by its first words and can drift into a line that mixes two steps ("Slide the drain
plug with the ratchet."). Here the answer's two step lines are constrained to the task:
``Current step:`` one of its steps, ``Next step:`` one of its steps or the task being
complete; the warning after them is free text. With beam search the step lines are chosen
by the likelihood of the whole line, not of its first token alone.

:class:`StepLines` holds the allowed token sequences of one task as a trie;
:class:`StepLinesProcessor` is the ``transformers`` logits processor that applies it.

Where the model has a step classifier (:mod:`lavia_live.models.step_classifier`), the
engine holds ``Current step:`` to the step it reads from the newest frame, and the model
chooses the next step and writes the warning after it.

Answers to questions are free text, but where one names a step after one of the contract's
labels ("You are on: <step>", "Next: <step>"), :class:`StepSlots` holds the text after the
label to the task's steps (after ``Next:``, or the task being complete), so an answer
cannot invent a step ("Next: Loosen the old oil into the pan."). The same processor
applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from lavia_live.contract.guidance import NEXT_LABEL, STEP_LABELS, TASK_COMPLETE, Guidance

_WARNING_LABEL = "\nWarning:"


class StepLines:
    """Token sequences of the answer up to ``Warning:`` for every (current, next) pair; with
    ``current`` (one of the steps, read by a step classifier), for that current step only."""

    def __init__(self, tokenizer: Any, steps: Sequence[str], current: str | None = None) -> None:
        if not steps:
            raise ValueError("no steps to choose from")
        if current is not None and current not in steps:
            raise ValueError(f"current step {current!r} is not one of the steps")
        self._next: dict[tuple[int, ...], set[int]] = {}
        self.longest = 0
        for now in steps if current is None else (current,):
            for following in (*steps, TASK_COMPLETE):
                text = Guidance(now, following).to_text()
                head = text[: text.index(_WARNING_LABEL) + len(_WARNING_LABEL)]
                ids = tokenizer(head, add_special_tokens=False)["input_ids"]
                whole = tokenizer(text, add_special_tokens=False)["input_ids"]
                if whole[: len(ids)] != ids:
                    # the tokenizer merges across "Warning:" and what follows: constrain
                    # up to the last token the two tokenisations share
                    shared = next(
                        (i for i, (a, b) in enumerate(zip(ids, whole, strict=False)) if a != b),
                        min(len(ids), len(whole)),
                    )
                    ids = ids[:shared]
                for end in range(len(ids)):
                    self._next.setdefault(tuple(ids[:end]), set()).add(ids[end])
                self.longest = max(self.longest, len(ids))

    def allowed(self, generated: Sequence[int]) -> set[int] | None:
        """Tokens that may follow ``generated``; None once the step lines are complete."""
        if len(generated) >= self.longest:
            return None
        return self._next.get(tuple(generated))


class TokenRule(Protocol):
    def allowed(self, generated: Sequence[int]) -> set[int] | None: ...


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class StepSlots:
    """The step texts that may follow a label in a question's answer.

    A label is matched as the tokenizer writes it at the start of the answer and after a
    word. While the tokens since the latest label are the start of an allowed text, only
    its continuations are allowed; everywhere else the answer is free.
    """

    def __init__(self, tokenizer: Any, steps: Sequence[str]) -> None:
        if not steps:
            raise ValueError("no steps to choose from")
        # label tokens -> the slot's allowed prefixes -> their next tokens
        self._slots: dict[tuple[int, ...], dict[tuple[int, ...], set[int]]] = {}
        labels = [(label, tuple(steps)) for label in STEP_LABELS]
        labels.append((NEXT_LABEL, (*steps, TASK_COMPLETE)))
        for label, texts in labels:
            for written in (label, f" {label}"):  # starting the answer, or after a word
                head = _tokens(tokenizer, written)
                trie = self._slots.setdefault(tuple(head), {})
                for text in texts:
                    whole = _tokens(tokenizer, f"{written} {text}")
                    if whole[: len(head)] != head:
                        continue  # the tokenizer merges the label with this text: left free
                    slot = whole[len(head) :]
                    for end in range(len(slot)):
                        trie.setdefault(tuple(slot[:end]), set()).add(slot[end])

    def allowed(self, generated: Sequence[int]) -> set[int] | None:
        """Tokens that may follow ``generated``; None where the answer is free."""
        best: tuple[int, dict[tuple[int, ...], set[int]]] | None = None
        for head, trie in self._slots.items():
            n = len(head)
            for end in range(len(generated), n - 1, -1):  # the latest occurrence
                if tuple(generated[end - n : end]) == head:
                    if best is None or end > best[0]:
                        best = (end, trie)
                    break
        if best is None:
            return None
        end, trie = best
        return trie.get(tuple(generated[end:]))


class StepLinesProcessor:
    """Masks every token that would leave a :class:`TokenRule` (:class:`StepLines`,
    :class:`StepSlots`) where it allows only some; the rows are prompt + generated tokens
    (beams included). ``lines`` is one rule for every row, or one per row (a batch of
    requests, prompts padded on the left to ``prompt_length``)."""

    def __init__(self, lines: TokenRule | Sequence[TokenRule], prompt_length: int) -> None:
        self.lines = lines
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            lines = self.lines[row] if isinstance(self.lines, Sequence) else self.lines
            allowed = lines.allowed(input_ids[row, self.prompt_length :].tolist())
            if allowed is None:
                continue
            keep = torch.tensor(sorted(allowed), device=scores.device)
            masked = torch.full_like(scores[row], float("-inf"))
            masked[keep] = scores[row, keep]
            scores[row] = masked
        return scores
