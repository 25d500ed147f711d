"""``lavia data build --dry-run``: count clips and estimate tokens and cost, spending nothing.

Videos are probed (container headers only, no decoding). Prompt tokens follow
:func:`~training.data.annotate.estimate_prompt_tokens` on the real prompt of each video;
where the guideline will be the Whisper transcript, its length is estimated from the
video's duration (narration runs at about 15 characters a second).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.errors import LaviaError
from training.config import PipelineSettings
from training.data.annotate import estimate_prompt_tokens
from training.data.build import Failure, task_for
from training.data.clips import count_clips, probe_video
from training.data.manifest import collect_inputs
from training.data.stages import extract_options

NARRATION_CHARS_PER_S = 15.0
COMPLETION_TOKENS_PER_CLIP = 60  # three short lines of guidance
WHISPER_USD_PER_MINUTE = 0.006


@dataclass
class Estimate:
    videos: int = 0
    clips: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    annotation_usd: float = 0.0
    transcription_usd: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("videos", f"{self.videos}"),
            ("clips", f"{self.clips}"),
            ("hours of video", f"{self.seconds / 3600:.3f}"),
            ("prompt tokens (est.)", f"{self.prompt_tokens:,}"),
            ("completion tokens (est.)", f"{self.completion_tokens:,}"),
            ("annotation cost (est.)", f"${self.annotation_usd:,.2f}"),
            ("transcription cost (est.)", f"${self.transcription_usd:,.2f}"),
            ("unreadable inputs", f"{len(self.failures)}"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines += [f"  {f.where}: {f.reason}" for f in self.failures]
        return "\n".join(lines)


def estimate_build(inputs: Sequence[str | Path], settings: PipelineSettings) -> Estimate:
    items, problems = collect_inputs(inputs)
    est = Estimate(failures=[Failure(p.where, "input", p.reason) for p in problems])
    library = TaskLibrary.load(settings.tasks.folder)
    a = settings.data.annotate
    paid = a.annotator == "openai"
    spec = settings.sampling.spec()
    for item in items:
        try:
            info = probe_video(item.path)
            placeholder = "x" * int(info.duration_s * NARRATION_CHARS_PER_S)
            task = task_for(item, library, placeholder)
        except (LaviaError, ValueError) as exc:
            est.failures.append(Failure(str(item.path), "probe", str(exc)))
            continue
        n = count_clips(info, spec, extract_options(settings))
        est.videos += 1
        est.clips += n
        est.seconds += info.duration_s
        if paid and n:
            frames = spec.clip_frames
            tokens = estimate_prompt_tokens(
                build_guidance_prompt(task, frames), frames, a.image_detail or "auto"
            )
            est.prompt_tokens += n * tokens
            est.completion_tokens += n * COMPLETION_TOKENS_PER_CLIP
        needs_whisper_api = item.guideline is None and settings.data.transcribe.backend == "openai"
        if needs_whisper_api and info.has_audio:
            est.transcription_usd += info.duration_s / 60 * WHISPER_USD_PER_MINUTE
    est.annotation_usd = (
        est.prompt_tokens * a.input_usd_per_mtok + est.completion_tokens * a.output_usd_per_mtok
    ) / 1e6
    return est
