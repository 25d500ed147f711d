"""Settings of the offline pipeline, layered like the server's (YAML < LAVIA_* < flags).

``PipelineSettings`` extends the live :class:`~lavia_live.config.Settings` (so sampling,
tasks and logging are the same objects on both sides) with the ``data`` section that
``lavia data`` reads. ``configs/data_build.yaml`` lists every key with its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lavia_live.config import Settings
from lavia_live.speech.asr import EMBEDDED_MODEL


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtractSettings(_Section):
    max_side: int = Field(448, ge=32, le=4096, description="longer side of written frames")
    jpeg_quality: int = Field(90, ge=10, le=100)
    min_frames: int = Field(8, ge=1, description="keep a last partial clip with this many")
    workers: int = Field(
        0,
        ge=0,
        description="processes decoding ranges of a long H.264/HEVC video side by side "
        "(0: one per core; 1: one pass); videos under a minute use one pass",
    )
    clip_hop: int | None = Field(
        None,
        ge=1,
        description="sampled frames between the ends of successive clips; null: clip_frames "
        "(consecutive clips). Smaller values give overlapping clips ending every hop seconds, "
        "including the short clips a live session starts with (min_frames_for_guidance).",
    )


class TranscribeSettings(_Section):
    backend: Literal["local", "openai"] = "local"
    model: str = Field(EMBEDDED_MODEL, description="local: model folder, size name or embedded")
    language: str | None = "en"
    beam_size: int = Field(5, ge=1, le=20)
    openai_model: str = "whisper-1"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = Field(
        3,
        ge=0,
        le=20,
        description="openai: retries of a failed upload by the openai SDK (429, 5xx, timeouts...)",
    )


class AnnotateSettings(_Section):
    annotator: Literal["openai", "oracle"] = "openai"
    model: str = "gpt-4o"
    base_url: str | None = Field(None, description="any OpenAI-compatible /v1 endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="'' when the endpoint needs none")
    max_concurrency: int = Field(4, ge=1, le=256)
    max_retries: int = Field(
        3,
        ge=0,
        le=20,
        description="retries of a failed request by the openai SDK (429, 5xx, timeouts...)",
    )
    max_answer_attempts: int = Field(
        3, ge=1, le=20, description="requests per clip while the answer does not validate"
    )
    timeout_s: float = Field(60.0, gt=0)
    structured_output: bool = True
    image_detail: Literal["low", "high", "auto"] | None = "low"
    input_usd_per_mtok: float = Field(2.50, ge=0)
    output_usd_per_mtok: float = Field(10.00, ge=0)
    questions_per_clip: float = Field(
        0.0,
        ge=0,
        le=10,
        description="oracle only: question records per clip, answered from the ground truth",
    )

    @model_validator(mode="after")
    def _questions_need_truth(self) -> AnnotateSettings:
        if self.questions_per_clip > 0 and self.annotator != "oracle":
            raise ValueError(
                "questions_per_clip needs the oracle annotator (answers come from the demo "
                "videos' ground truth)"
            )
        return self


class DataSettings(_Section):
    extract: ExtractSettings = ExtractSettings()
    transcribe: TranscribeSettings = TranscribeSettings()
    annotate: AnnotateSettings = AnnotateSettings()


class TinyModelSettings(_Section):
    """Shape of a from-scratch tiny Qwen2.5-VL (the embedded demo model's architecture)."""

    hidden_size: int = Field(256, ge=64, multiple_of=64)
    layers: int = Field(4, ge=1)
    vision_hidden: int = Field(128, ge=64, multiple_of=64)
    vision_depth: int = Field(2, ge=1)
    image_pixels: int = Field(112 * 112, ge=28 * 28, description="frame size budget, pixels")
    vocab_size: int = Field(2048, ge=512)


class TrainSettings(_Section):
    """``lavia train``: fine-tune a local checkpoint on instruction records."""

    model: Path | None = Field(None, description="base model folder (Hugging Face format)")
    init_tiny: bool = Field(
        False,
        description="when `model` does not exist, create it: a randomly initialised tiny "
        "Qwen2.5-VL (shape in `tiny`) with a tokenizer trained on the tasks and records",
    )
    tiny: TinyModelSettings = TinyModelSettings()
    train_records: list[Path] = Field(default_factory=list, description="records.jsonl files")
    val_records: list[Path] = Field(default_factory=list, description="held-out records")
    output_dir: Path = Path("runs/train")
    method: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    freeze_vision: bool = True
    image_pixels: int | None = Field(
        None,
        ge=28 * 28,
        description="Qwen2.5-VL: the frame size budget in pixels the model trains at and is "
        "saved with (sides rounded to multiples of 28, one LLM token per 28x28 block); "
        "unset: the base model's own",
    )
    vision_warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="before training, epochs of step classification on each clip's last frame "
        "for the trainable vision weights (0: off; for models trained from scratch)",
    )
    vision_warmup_lr: float = Field(1e-3, gt=0)
    vision_warmup_batch: int = Field(
        32, ge=1, description="frames per warm-up step (and per step classifier step)"
    )
    step_classifier_epochs: float = Field(
        0.0,
        ge=0,
        description="after training (Qwen2.5-VL), epochs of a step classifier saved with the "
        "model: a copy of its vision tower that names each clip's current step from its last "
        "frame; the local engine writes the current step from it (0: none)",
    )
    step_classifier_lr: float = Field(1e-3, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; wins over epochs")
    stop_after: int | None = Field(
        None,
        ge=1,
        description="end the run after this many optimizer steps, the learning-rate schedule "
        "still spanning the whole run (epochs or max_steps): a pass stopped partway",
    )
    batch_size: int = Field(1, ge=1, description="examples per device per micro-batch")
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    first_token_weight: float = Field(
        1.0,
        ge=1,
        description="loss weight of each answer's first token, which decides the kind of "
        "answer (a step, a count, a yes or no); >1 when the model must learn to read the "
        "question",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on a GPU that has it, else fp32"
    )
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    save_every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0
    merge_lora: bool = Field(True, description="save the final model with LoRA merged in")
    num_workers: int = Field(0, ge=0, description="data-loading processes")


class PipelineSettings(Settings):
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
