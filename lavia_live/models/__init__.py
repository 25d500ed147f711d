"""Model families (Qwen2.5-VL, LLaVA) shared by training and the local inference engine,
and the embedded demo model that ships in ``embedded/``."""

from pathlib import Path

from lavia_live.models.families import (
    FAMILIES,
    Encoded,
    EncodingError,
    Family,
    LoadedModel,
    ModelLoadError,
    collate,
    detect_family,
    encode,
    end_of_turn_id,
    freeze_vision,
    labels_for,
    load_model,
    load_processor,
    lora_target_modules,
)

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "embedded"
"""The embedded demo model: a tiny Qwen2.5-VL trained on the demo task only
(``scripts/build_demo_model`` rebuilds it; its held-out scores are in ``eval.json``)."""

__all__ = [
    "EMBEDDED_MODEL_DIR",
    "FAMILIES",
    "Encoded",
    "EncodingError",
    "Family",
    "LoadedModel",
    "ModelLoadError",
    "collate",
    "detect_family",
    "encode",
    "end_of_turn_id",
    "freeze_vision",
    "labels_for",
    "load_model",
    "load_processor",
    "lora_target_modules",
]
