"""The user-facing settings of LaViA Live, immutable once loaded.

Every key can be set in a YAML file (``configs/lavia.yaml`` lists them all with their
defaults), as ``LAVIA_SECTION__KEY`` in the environment, or with ``--set section.key=V``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lavia_live.contract.sampling import SamplingSpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingSettings(_Section):
    """The sampling half of the train/serve contract; change it only with a retrained model."""

    reference_fps: float = Field(30.0, gt=0, le=240)
    stride_frames: int = Field(30, ge=1, le=3600)
    clip_frames: int = Field(15, ge=1, le=64)
    min_frames_for_guidance: int = Field(
        4, ge=1, description="sampled frames a live session needs before its first guidance"
    )

    @model_validator(mode="after")
    def _min_within_clip(self) -> SamplingSettings:
        if self.min_frames_for_guidance > self.clip_frames:
            raise ValueError(
                f"min_frames_for_guidance ({self.min_frames_for_guidance}) exceeds "
                f"clip_frames ({self.clip_frames})"
            )
        return self

    def spec(self) -> SamplingSpec:
        return SamplingSpec(self.reference_fps, self.stride_frames, self.clip_frames)


class TaskSettings(_Section):
    folder: Path | None = Field(None, description="task YAML folder; default: shipped data/tasks")
    default_task: str = "demo_oil_change"


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    sampling: SamplingSettings = SamplingSettings()
    tasks: TaskSettings = TaskSettings()
    logging: LoggingSettings = LoggingSettings()
