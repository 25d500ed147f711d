"""The fixed prompt text encoded once per task on the embedded model: answers (guidance and
streamed questions, two tasks, clips of different lengths) equal those of an engine that
encodes every prompt whole, and the cache keeps what it is told to."""

from __future__ import annotations

import pytest

from lavia_live.contract.prompt import build_guidance_prompt, build_question_prompt
from lavia_live.engines.base import GenerationOptions, complete
from lavia_live.engines.local import LocalEngine
from lavia_live.engines.prefix_cache import PrefixCache
from lavia_live.models import EMBEDDED, model_folder
from tests.lavia_live.engines.clips import COOKING, TASK, noise_frames


async def test_answers_equal_whole_prompt_encoding_and_the_cache_is_bounded() -> None:
    folder = model_folder(EMBEDDED)
    whole = LocalEngine(folder, prefix_cache=0)
    assert whole.prefix_cache is None
    reused = LocalEngine(folder, prefix_cache=1)  # one task's prefix kept at a time
    cache = reused.prefix_cache
    assert cache is not None
    frames = noise_frames(20, seed=13)
    asks = [
        build_guidance_prompt(TASK, 15),
        build_question_prompt(TASK, 15, "how many steps are left?"),
        build_guidance_prompt(TASK, 6),
        build_guidance_prompt(COOKING, 9),  # another task: its own prefix, the first one evicted
        build_guidance_prompt(TASK, 4),
    ]
    options = GenerationOptions(max_tokens=60)
    for i, prompt in enumerate(asks):
        clip = frames[i : i + prompt.n_images]
        assert await complete(reused, prompt, clip, options) == await complete(
            whole, prompt, clip, options
        ), prompt.kind
    # TASK's prefix was encoded for the first request and reused by the next two; COOKING's
    # replaced it, so the last request encoded TASK's again.
    assert (cache.misses, cache.hits, len(cache)) == (3, 2, 1)
    # With beams the prompt is encoded whole (the cache is not expanded over beams).
    beams = LocalEngine(folder, beams=2)
    assert beams.prefix_cache is not None
    await complete(beams, build_guidance_prompt(TASK, 4), frames[:4], options)
    assert beams.prefix_cache.misses == beams.prefix_cache.hits == 0
    with pytest.raises(ValueError, match="at least 1"):
        PrefixCache(reused.loaded.model, 0, max_prefixes=0)
