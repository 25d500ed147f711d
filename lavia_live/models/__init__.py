"""Model families (Qwen2.5-VL, LLaVA) shared by training and the local inference engine,
and the place of the embedded demo model."""

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
"""Where ``scripts/build_demo_model`` puts the embedded demo model (a tiny Qwen2.5-VL that
knows the demo task only) and its held-out scores (``eval.json``)."""

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
