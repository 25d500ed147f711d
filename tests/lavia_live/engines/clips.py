"""What the engine tests share: the demo task, a task the models never saw, and frames of
random noise as the JPEG bytes a live session sends."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lavia_live.contract.tasks import TaskContext, TaskLibrary

TASK = TaskLibrary.load().require("demo_oil_change")
COOKING = TaskContext(
    id="omelette", title="Make an omelette", steps=("Whisk the eggs.", "Heat the pan.", "Fold it.")
)


def noise_frames(count: int, seed: int, size: tuple[int, int] = (112, 84)) -> list[bytes]:
    """``count`` JPEG frames of random pixels (``size`` is width, height)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out
