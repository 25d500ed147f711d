"""Model families (Qwen2.5-VL, LLaVA) shared by training and the local inference engine."""

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

__all__ = [
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
