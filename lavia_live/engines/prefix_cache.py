"""The fixed part of a prompt encoded once: its KV kept per task and reused by every request.

Every prompt of a task starts with the same text (the instructions and the task's steps,
the contract's fixed part) before the first frame: 218 of the 511 tokens of a 15-frame
guidance prompt to the embedded model. :class:`PrefixCache` runs the model over that
prefix once, keeps its key/value cache, and hands each request a copy to start from, so
generation encodes only the frames and what follows them. The prefix is the prompt's
tokens before its first vision token; its key is those token ids, so a task whose text
changes gets a new entry. The ``max_prefixes`` most recently used are kept.

Qwen2.5-VL only (``transformers`` computes its 3D positions for the uncached vision tokens
when generation continues from a cache); one request at a time (greedy or sampled, not
beams, not a batch: their rows are padded differently).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from transformers import DynamicCache

__all__ = ["PrefixCache"]


class PrefixCache:
    def __init__(self, model: Any, vision_start_id: int, max_prefixes: int = 8) -> None:
        if max_prefixes < 1:
            raise ValueError(f"max_prefixes must be at least 1, got {max_prefixes}")
        self.model = model
        self.vision_start_id = vision_start_id
        self.max_prefixes = max_prefixes
        self._store: OrderedDict[tuple[int, ...], DynamicCache] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def start(self, inputs: dict[str, torch.Tensor]) -> DynamicCache | None:
        """A copy of the KV of ``inputs``' prefix (computed now if new) for one request's
        generation to continue from; None when the prompt has no frames or no text before
        them, or is a batch."""
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            return None
        starts = (ids[0] == self.vision_start_id).nonzero()
        if len(starts) == 0 or int(starts[0, 0]) == 0:
            return None
        length = int(starts[0, 0])
        key = tuple(ids[0, :length].tolist())
        cache = self._store.get(key)
        if cache is None:
            cache = DynamicCache()
            prefix = {k: inputs[k][:, :length] for k in ("input_ids", "attention_mask")}
            if "mm_token_type_ids" in inputs:
                prefix["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, :length]
            with torch.inference_mode():
                self.model(**prefix, cache=cache, use_cache=True)
            self._store[key] = cache
            self.misses += 1
            while len(self._store) > self.max_prefixes:
                self._store.popitem(last=False)
        else:
            self._store.move_to_end(key)
            self.hits += 1
        # positions of the uncached part are computed afresh from the whole prompt
        self.model.model.rope_deltas = None
        return copy.deepcopy(cache)
