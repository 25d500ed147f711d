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

EMBEDDED_FRAME_MAX_SIDE = 160
"""Longer side of the frames the embedded model was trained on (``configs/train_demo.yaml``,
``data.extract.max_side``); live sessions on it convert frames to this size."""

EMBEDDED = "embedded"
"""The name that selects the embedded demo model wherever a model folder is asked for."""


def model_folder(name: str | Path) -> Path:
    """A model folder, or the embedded demo model's for :data:`EMBEDDED`."""
    if str(name) != EMBEDDED:
        return Path(name)
    if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
        raise ModelLoadError(
            f"the embedded demo model is not installed ({EMBEDDED_MODEL_DIR}); "
            "scripts/build_demo_model builds it"
        )
    return EMBEDDED_MODEL_DIR


__all__ = [
    "EMBEDDED",
    "EMBEDDED_FRAME_MAX_SIDE",
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
    "model_folder",
]
