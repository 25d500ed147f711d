"""Each frame's vision-encoder output, computed once and reused while the frame stays in the
live window.

A live clip shares 14 of its 15 frames with the one a second before it. Qwen2.5-VL encodes
each image on its own (its vision attention never crosses from one image to another), so an
image's features do not depend on the other frames of the request (up to float rounding:
the matrix products are blocked by the batch's size), and the features of a
frame seen before can be taken from memory. :class:`VisionCache` wraps the model's
``get_image_features`` (the one place its forward pass turns pixels into image features):
during :meth:`VisionCache.frames`, the images of the request are looked up by their keys
(a digest of each frame's JPEG bytes, :func:`frame_key`), only the missing ones are encoded,
and the features are returned in the request's order. Outside it, or when the keys do not
match the request's images, the model's own function runs unchanged.

Keys are content digests, so sessions that send the same frame share it. The cache keeps
the ``max_images`` most recently used images (8 sessions x 15 frames fit in 120).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

__all__ = ["VisionCache", "frame_key", "supports_vision_cache"]


def frame_key(jpeg: bytes) -> bytes:
    """The cache key of a frame: a digest of the JPEG bytes the engine decodes."""
    return hashlib.blake2b(jpeg, digest_size=16).digest()


def supports_vision_cache(model: Any) -> bool:
    """Whether ``model`` encodes each image on its own behind ``get_image_features``
    (Qwen2.5-VL); other families run without the cache."""
    inner = getattr(model, "model", None)
    return getattr(getattr(model, "config", None), "model_type", None) == "qwen2_5_vl" and (
        inner is not None and hasattr(inner, "get_image_features") and hasattr(inner, "visual")
    )


class VisionCache:
    """Installed on a Qwen2.5-VL model (``...ForConditionalGeneration``) at construction."""

    def __init__(self, model: Any, max_images: int = 120) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        if not supports_vision_cache(model):
            raise ValueError("the vision cache needs a Qwen2.5-VL model")
        self.max_images = max_images
        self._inner = model.model
        self._merge = int(model.model.visual.spatial_merge_size) ** 2
        self._encode: Callable[..., Any] = model.model.get_image_features
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._keys = threading.local()
        self.hits = 0  # images taken from the cache
        self.misses = 0  # images encoded
        model.model.get_image_features = self._features

    @contextlib.contextmanager
    def frames(self, keys: Sequence[bytes]) -> Iterator[None]:
        """Within this block (on this thread), the model's images are these frames."""
        self._keys.value = list(keys)
        try:
            yield
        finally:
            self._keys.value = None

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)

    def _features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        keys: list[bytes] | None = getattr(self._keys, "value", None)
        if keys is None or image_grid_thw is None or len(keys) != image_grid_thw.shape[0]:
            return self._encode(pixel_values, image_grid_thw, **kwargs)
        patches = image_grid_thw.prod(-1).tolist()
        starts = [sum(patches[:i]) for i in range(len(patches))]
        fresh: list[int] = []  # the images to encode (a frame twice in a request: once)
        seen: set[bytes] = set()
        for i, key in enumerate(keys):
            if key not in self._store and key not in seen:
                fresh.append(i)
                seen.add(key)
        if fresh:
            pixels = torch.cat([pixel_values[starts[i] : starts[i] + patches[i]] for i in fresh])
            out = self._encode(pixels, image_grid_thw[fresh], **{**kwargs, "return_dict": True})
            for i, features in zip(fresh, out.pooler_output, strict=True):
                self._store[keys[i]] = features
            self.misses += len(fresh)
        self.hits += len(keys) - len(fresh)
        features = []
        for key in keys:
            self._store.move_to_end(key)
            features.append(self._store[key])
        while len(self._store) > self.max_images:
            self._store.popitem(last=False)
        # per image, as the model's own function returns them (torch.split of its output)
        return BaseModelOutputWithPooling(pooler_output=tuple(features))  # type: ignore[arg-type]
