"""Guidance decoding that names only the task's steps (in-process models).

The guidance prompt asks for the step texts from the task's list. A small model decides a
step by its first words and can drift into a line that mixes two steps ("Slide the drain
plug with the ratchet."). Here the answer's two step lines are constrained to the task:
``Current step:`` one of its steps, ``Next step:`` one of its steps or the task being
complete; the warning after them is free text. With beam search the step lines are chosen
by the likelihood of the whole line, not of its first token alone.

:class:`StepLines` holds the allowed token sequences of one task as a trie;
:class:`StepLinesProcessor` is the ``transformers`` logits processor that applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lavia_live.contract.guidance import TASK_COMPLETE, Guidance

_WARNING_LABEL = "\nWarning:"


class StepLines:
    """Token sequences of the answer up to ``Warning:`` for every (current, next) pair."""

    def __init__(self, tokenizer: Any, steps: Sequence[str]) -> None:
        if not steps:
            raise ValueError("no steps to choose from")
        self._next: dict[tuple[int, ...], set[int]] = {}
        self.longest = 0
        for current in steps:
            for following in (*steps, TASK_COMPLETE):
                text = Guidance(current, following).to_text()
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


class StepLinesProcessor:
    """Masks every token that would leave :class:`StepLines` while the step lines are
    being written; the rows are prompt + generated tokens (beams included). ``lines`` is
    one task's for every row, or one per row (a batch of requests, prompts padded on the
    left to ``prompt_length``)."""

    def __init__(self, lines: StepLines | Sequence[StepLines], prompt_length: int) -> None:
        self.lines = lines
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            lines = self.lines if isinstance(self.lines, StepLines) else self.lines[row]
            allowed = lines.allowed(input_ids[row, self.prompt_length :].tolist())
            if allowed is None:
                continue
            keep = torch.tensor(sorted(allowed), device=scores.device)
            masked = torch.full_like(scores[row], float("-inf"))
            masked[keep] = scores[row, keep]
            scores[row] = masked
        return scores
