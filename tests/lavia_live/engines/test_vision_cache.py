"""The per-frame vision cache on the embedded Qwen2.5-VL model: a live window sliding one
frame a second gets exactly the answers of a model that encodes every frame afresh, while
encoding only the new frame; the cache stays within its bound."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lavia_live.contract.prompt import build_guidance_prompt, build_question_prompt
from lavia_live.engines.base import GenerationOptions, complete
from lavia_live.engines.local import LocalEngine, decode_frames
from lavia_live.engines.vision_cache import VisionCache, frame_key, supports_vision_cache
from lavia_live.models import EMBEDDED, model_folder
from lavia_live.models.families import encode
from tests.lavia_live.engines.clips import TASK, noise_frames

OPTIONS = GenerationOptions(max_tokens=40)


@pytest.fixture(scope="module")
def engines() -> tuple[LocalEngine, LocalEngine]:
    folder = model_folder(EMBEDDED)
    return LocalEngine(folder, vision_cache=120), LocalEngine(folder, vision_cache=0)


async def test_a_sliding_window_answers_as_fresh_encoding_does(
    engines: tuple[LocalEngine, LocalEngine],
) -> None:
    cached, fresh = engines
    assert fresh.vision_cache is None
    cache = cached.vision_cache
    assert cache is not None
    video = noise_frames(18, seed=5)
    for end in range(15, 19):  # four live clips, each one frame later than the last
        clip = video[end - 15 : end]
        for prompt in (build_guidance_prompt(TASK, 15), build_question_prompt(TASK, 15, "next?")):
            assert await complete(cached, prompt, clip, OPTIONS) == await complete(
                fresh, prompt, clip, OPTIONS
            )
    # The first clip's 15 frames were encoded, then one new frame per clip; everything else
    # (the question on the same clip, the 14 frames a clip shares with the last) came from it.
    assert cache.misses == 18
    assert cache.hits == 15 + 3 * (14 + 15)
    assert len(cache) == 18


async def test_beams_and_a_small_bound_still_answer_alike(
    engines: tuple[LocalEngine, LocalEngine],
) -> None:
    fresh = engines[1]
    clip = noise_frames(6, seed=5)
    folder = model_folder(EMBEDDED)
    small = LocalEngine(folder, vision_cache=4)  # smaller than a clip: kept to 4 frames
    beams = LocalEngine(folder, beams=2)  # beams repeat the images: encoded afresh
    prompt = build_guidance_prompt(TASK, 6)
    expected = await complete(fresh, prompt, clip, OPTIONS)
    assert await complete(small, prompt, clip, OPTIONS) == expected
    assert small.vision_cache is not None and len(small.vision_cache) == 4
    wide = await complete(LocalEngine(folder, beams=2, vision_cache=0), prompt, clip, OPTIONS)
    assert await complete(beams, prompt, clip, OPTIONS) == wide


def test_features_equal_the_models_own_and_other_requests_pass_through() -> None:
    loaded = LocalEngine(model_folder(EMBEDDED), vision_cache=0).loaded
    model = loaded.model
    assert supports_vision_cache(model)
    video = noise_frames(16, seed=5)

    def images(clip: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        prompt = build_guidance_prompt(TASK, len(clip))
        inputs = encode(loaded, loaded.family, prompt, decode_frames(clip)).inputs
        return inputs["pixel_values"], inputs["image_grid_thw"]

    before, now = images(video[:15]), images(video[1:])
    with torch.inference_mode():
        own = model.model.get_image_features(*now).pooler_output
        cache = VisionCache(model, max_images=32)
        try:
            with cache.frames([frame_key(f) for f in video[:15]]):  # the clip a second before
                model.model.get_image_features(*before)
            with cache.frames([frame_key(f) for f in video[1:]]):
                reused = model.model.get_image_features(*now).pooler_output
            assert cache.misses == 16 and cache.hits == 14
            assert len(reused) == len(own) == 15
            # The same image, encoded in a batch of another size: the same features up to
            # float32 rounding (the matrix products are blocked by the batch's row count).
            for a, b in zip(own, reused, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            # keys that do not match the request's images, or none: the model's own function
            for keys in ([b"one key"], None):
                with cache.frames(keys) if keys else contextlib.nullcontext():
                    passed = model.model.get_image_features(*now).pooler_output
                assert all(torch.equal(a, b) for a, b in zip(own, passed, strict=True))
            assert cache.misses == 16 and cache.hits == 14
        finally:
            del model.model.get_image_features  # the model's own method again
    with pytest.raises(ValueError, match="at least 1"):
        VisionCache(model, max_images=0)
