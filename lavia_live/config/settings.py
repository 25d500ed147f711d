"""The user-facing settings of LaViA Live, immutable once loaded.

Every key can be set in a YAML file (``configs/lavia.yaml`` lists them all with their
defaults), as ``LAVIA_SECTION__KEY`` in the environment, or with ``--set section.key=V``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

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


SGLANG_COMMAND = (
    "{python}", "-m", "sglang.launch_server", "--model-path", "{model}",
    "--host", "{host}", "--port", "{port}", "--tp-size", "{tp}",
)  # fmt: skip
LAUNCH_PLACEHOLDERS = {"python": "", "model": "", "host": "", "port": "", "tp": ""}


class LaunchSettings(_Section):
    """``engine.name: sglang``: the model server ``lavia`` starts, watches and stops
    (:mod:`lavia_live.engines.managed_server`)."""

    model: str | None = Field(None, description="the checkpoint it serves (folder or hub id)")
    python: str = Field(
        "python3", min_length=1, description="the interpreter of the environment with SGLang"
    )
    tp: int = Field(1, ge=1, le=1024, description="tensor-parallel size (GPUs per model)")
    args: list[str] = Field(default_factory=list, description="more arguments, appended")
    command: list[str] = Field(
        default_factory=lambda: list(SGLANG_COMMAND),
        min_length=1,
        description="the command line; {python} {model} {host} {port} {tp} are filled in",
    )
    startup_timeout_s: float = Field(900.0, gt=0, description="start to healthy, at most")
    stop_timeout_s: float = Field(20.0, gt=0, description="SIGTERM to SIGKILL")
    restart_delay_s: float = Field(1.0, gt=0, description="first restart's delay; then doubled")
    restart_delay_max_s: float = Field(60.0, gt=0)
    max_restarts: int = Field(5, ge=0, le=1000, description="in a row; then it stays down")
    health_interval_s: float = Field(
        10.0, ge=0, description="how often a running server's GET /health is checked; 0: never"
    )
    health_timeout_s: float = Field(5.0, gt=0, description="one health check's answer, at most")
    unhealthy_after: int = Field(
        3, ge=1, le=100, description="failed health checks in a row that restart it"
    )

    @model_validator(mode="after")
    def _known_placeholders(self) -> LaunchSettings:
        for part in self.command:
            try:
                part.format(**LAUNCH_PLACEHOLDERS)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"command part {part!r}: unknown placeholder {exc} (known: "
                    f"{', '.join('{' + k + '}' for k in LAUNCH_PLACEHOLDERS)}; "
                    "double a brace to keep it: {{ }})"
                ) from None
        return self


class EngineSettings(_Section):
    """The model behind the guidance (:mod:`lavia_live.engines.factory`)."""

    name: str = Field(
        "embedded",
        min_length=1,
        description="embedded, a model folder, openai:MODEL, an OpenAI-compatible URL, or "
        "sglang (a server lavia starts: engine.launch)",
    )
    api_model: str | None = Field(None, description="model name at an endpoint URL")
    api_key_env: str = Field("OPENAI_API_KEY", description="'' for a server without a key")
    launch: LaunchSettings = LaunchSettings()
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of an in-process model; auto: bfloat16 on a CUDA GPU that has it, "
        "else the checkpoint's",
    )
    cpu_threads: int = Field(
        1, ge=0, le=256, description="torch CPU threads of an in-process model; 0: one per core"
    )
    concurrency: int = Field(
        0, ge=0, le=256, description="model requests in flight across sessions; 0: per engine"
    )
    max_tokens: int = Field(96, ge=8, le=4096)
    steps_only: bool = Field(
        True,
        description="an in-process model's guidance, and the steps its answers name after "
        "a label ('Next:'), are only the task's steps (decoding constrained to the step list)",
    )
    beams: int = Field(
        1, ge=1, le=16, description="beam width of that guidance decoding; 1: greedy"
    )
    vision_cache: int = Field(
        120,
        ge=0,
        le=100_000,
        description="frames whose vision features an in-process Qwen2.5-VL model keeps while "
        "they stay in a live window; 0: every frame encoded each time",
    )
    prefix_cache: int = Field(
        8,
        ge=0,
        le=10_000,
        description="tasks whose fixed prompt text an in-process Qwen2.5-VL model keeps "
        "encoded (its KV); 0: every prompt encoded whole",
    )
    max_batch: int = Field(
        8,
        ge=1,
        le=256,
        description="guidance requests of an in-process model run together in one batch "
        "(sessions asking at once); 1: one at a time",
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="how long a batch waits for more requests once the model is free",
    )
    frame_max_side: int | None = Field(
        None, ge=32, le=4096, description="frame size sent to the model; null: the engine's"
    )
    jpeg_quality: int = Field(90, ge=1, le=100)
    image_detail: Literal["low", "high", "auto"] | None = Field(
        "low", description="OpenAI image detail of each frame; null: left to the server"
    )
    supersede_after_s: float | None = Field(
        5.0,
        gt=0,
        description="a newer clip cancels guidance in flight this long without a token; "
        "null: never",
    )
    price_per_mtok_input: float | None = Field(
        None, ge=0, description="USD per million prompt tokens, for the cost in 'state'"
    )
    price_per_mtok_output: float | None = Field(
        None, ge=0, description="USD per million completion tokens; null: cost unknown"
    )


class IceServer(_Section):
    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


class ServeSettings(_Section):
    """``lavia serve``: where it listens, who may connect, and its limits."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    self_signed: bool = Field(False, description="make (and reuse) a self-signed certificate")
    token: SecretStr | None = Field(None, description="shared token clients must send")
    max_sessions: int = Field(8, ge=1, le=1000)
    ice_servers: list[IceServer] = Field(default_factory=list, description="STUN/TURN servers")
    connect_timeout_s: float = Field(30.0, gt=0, description="offer to connected, at most")
    idle_timeout_s: float = Field(20.0, gt=0, description="end a session without video this long")
    state_interval_s: float = Field(1.0, gt=0, le=60)
    question_max_chars: int = Field(500, ge=1, le=4000)
    confirm_answers: int = Field(
        2, ge=1, le=10, description="answers in a row that a new step needs to be announced"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.self_signed and self.tls_cert is not None:
            raise ValueError("self_signed and tls_cert/tls_key exclude each other")
        return self


class ModelServerSettings(_Section):
    """``lavia model-server``: the in-process model of ``engine`` (its name, device and
    decoding) served over the OpenAI protocol (:mod:`lavia_live.server.model_server`)."""

    host: str = "127.0.0.1"
    port: int = Field(30000, ge=0, le=65535, description="SGLang's default port")
    model_id: str | None = Field(
        None, min_length=1, description="the id /v1/models lists; null: the model folder's name"
    )
    queue_size: int = Field(
        16, ge=0, le=10000, description="requests waiting beyond those running; more get 429"
    )
    max_images: int = Field(64, ge=1, le=1024, description="images one request may carry")
    max_body_mb: float = Field(32.0, gt=0, le=1024, description="largest request body")
    max_tokens: int = Field(
        256, ge=1, le=32768, description="answer length of a request that sets none"
    )


class SpeechSettings(_Section):
    """Spoken output (:mod:`lavia_live.speech.synthesis`): guidance and answers, sentence by
    sentence, on the session's WebRTC audio track."""

    enabled: bool = Field(True, description="speak to clients that receive audio")
    engine: Literal["espeak", "openai"] = "espeak"
    voice: str = Field("en-us", min_length=1, max_length=64, description="eSpeak NG voice")
    rate_wpm: int = Field(160, ge=80, le=450, description="speaking rate, words per minute")
    openai_model: str = Field("gpt-4o-mini-tts", min_length=1, description="or tts-1, tts-1-hd")
    openai_voice: str = Field("alloy", min_length=1, max_length=64)
    openai_base_url: str | None = Field(None, description="None: the OpenAI API")
    openai_api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(20.0, gt=0, le=300, description="one sentence's synthesis")
    max_queued_sentences: int = Field(16, ge=1, le=1000)


class ListeningSettings(_Section):
    """Voice questions (:mod:`lavia_live.server.listener`): the client's microphone track is
    cut into utterances by the Silero VAD and transcribed by one shared faster-whisper worker;
    each final transcript is answered as a typed question."""

    enabled: bool = Field(True, description="transcribe the audio clients send")
    model: str = Field(
        "embedded:tiny.en",
        min_length=1,
        description="embedded:tiny.en, a CTranslate2 model folder, or a cached Whisper size name",
    )
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = Field(1, ge=1, le=10, description="1: greedy decoding, the fastest")
    encoder_window_s: Literal[10, 20, 30] = Field(
        10, description="utterances this short are encoded in this many seconds, not 30"
    )
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero speech probability")
    min_silence_ms: int = Field(500, ge=100, le=5000, description="silence that ends a question")
    min_speech_ms: int = Field(250, ge=0, le=5000, description="shorter utterances are dropped")
    speech_pad_ms: int = Field(200, ge=0, le=1000, description="audio kept around the speech")
    early_final_ms: int = Field(
        64, ge=32, le=5000, description="silence after which the words are recognised early"
    )
    max_utterance_s: float = Field(
        15.0, ge=1, le=30, description="an utterance this long is cut and transcribed"
    )
    partial_interval_s: float = Field(
        1.0, ge=0, le=30, description="partial transcripts while speaking; 0: none"
    )
    gate_while_speaking: bool = Field(
        False, description="drop the microphone while the assistant speaks (no echo cancelling)"
    )
    barge_in: bool = Field(
        True, description="the person's voice stops the assistant's (push-to-talk always does)"
    )
    pause_guidance: bool = Field(
        True, description="no new guidance request while the person speaks (at most 8 s)"
    )
    answer_early: bool = Field(
        True,
        description="start answering a voice question before its end is confirmed (held back;"
        " a withdrawn one costs a model request)",
    )
    queue_size: int = Field(8, ge=1, le=1000, description="utterances waiting, all sessions")
    timeout_s: float = Field(30.0, gt=0, le=300, description="one utterance's recognition")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    sampling: SamplingSettings = SamplingSettings()
    tasks: TaskSettings = TaskSettings()
    engine: EngineSettings = EngineSettings()
    serve: ServeSettings = ServeSettings()
    model_server: ModelServerSettings = ModelServerSettings()
    speech: SpeechSettings = SpeechSettings()
    listening: ListeningSettings = ListeningSettings()
    logging: LoggingSettings = LoggingSettings()
