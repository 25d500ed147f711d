"""Settings of the offline pipeline, layered like the server's (YAML < LAVIA_* < flags).

``PipelineSettings`` extends the live :class:`~lavia_live.config.Settings` (so sampling,
tasks and logging are the same objects on both sides) with the ``data`` section that
``lavia data`` reads. ``configs/data_build.yaml`` lists every key with its default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lavia_live.config import Settings
from lavia_live.speech.asr import EMBEDDED_MODEL


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtractSettings(_Section):
    max_side: int = Field(448, ge=32, le=4096, description="longer side of written frames")
    jpeg_quality: int = Field(90, ge=10, le=100)
    min_frames: int = Field(8, ge=1, description="keep a last partial clip with this many")
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


class AnnotateSettings(_Section):
    annotator: Literal["openai", "oracle"] = "openai"
    model: str = "gpt-4o"
    base_url: str | None = Field(None, description="any OpenAI-compatible /v1 endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="'' when the endpoint needs none")
    max_concurrency: int = Field(4, ge=1, le=256)
    max_attempts: int = Field(4, ge=1, le=20)
    timeout_s: float = Field(60.0, gt=0)
    structured_output: bool = True
    image_detail: Literal["low", "high", "auto"] | None = "low"
    input_usd_per_mtok: float = Field(2.50, ge=0)
    output_usd_per_mtok: float = Field(10.00, ge=0)


class DataSettings(_Section):
    extract: ExtractSettings = ExtractSettings()
    transcribe: TranscribeSettings = TranscribeSettings()
    annotate: AnnotateSettings = AnnotateSettings()


class PipelineSettings(Settings):
    data: DataSettings = DataSettings()
