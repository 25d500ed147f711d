"""The wire protocol of ``lavia serve``, version :data:`PROTOCOL_VERSION`.

Signaling is one HTTP request: ``POST /offer`` with :class:`OfferRequest` answers
:class:`OfferResponse`. Everything after that travels as JSON text on the data channel
labelled ``lavia`` that the client creates before its offer: :data:`ClientMessage` from the
client, the ``*Event`` models from the server. Every message has a ``type``. The README's
"Protocol" section documents the same for third-party clients; the tests check both agree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lavia_live.contract.tasks import TaskContext

PROTOCOL_VERSION = 1
CHANNEL_LABEL = "lavia"
MAX_CLIENT_MESSAGE_BYTES = 4096
MAX_OFFER_BYTES = 64 * 1024


class ProtocolError(ValueError):
    """A client message or request body that breaks the protocol; ``code`` names the rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- signaling --------------------------------------------------------------------------


class OfferRequest(_Wire):
    sdp: str = Field(min_length=1, max_length=MAX_OFFER_BYTES)
    type: Literal["offer"]
    task: str | None = Field(None, max_length=80, description="task id; default: the server's")


class OfferResponse(_Wire):
    sdp: str
    type: Literal["answer"] = "answer"
    session: str
    protocol: int = PROTOCOL_VERSION


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every HTTP error the server answers."""
    return {"error": {"code": code, "message": message}}


# -- client -> server -------------------------------------------------------------------


class QuestionMessage(_Wire):
    type: Literal["question"]
    text: str = Field(min_length=1, max_length=4000)
    id: str | None = Field(None, max_length=64)


class TaskMessage(_Wire):
    type: Literal["task"]
    task: str = Field(min_length=1, max_length=80)


class ResetMessage(_Wire):
    type: Literal["reset"]


class SpeechMessage(_Wire):
    """The assistant's voice in this session: mute it, pick a voice, change the rate.
    Fields left out keep their value."""

    type: Literal["speech"]
    muted: bool | None = None
    voice: str | None = Field(None, min_length=1, max_length=64)
    rate: int | None = Field(None, ge=80, le=450, description="words per minute")


class TalkMessage(_Wire):
    """Push-to-talk: ``start`` when the person presses (the assistant stops speaking, as when
    they start talking hands-free, and a pause ends no question), ``end`` when they release
    (the utterance in progress is transcribed at once, not after the silence that ends a
    question)."""

    type: Literal["talk"]
    state: Literal["start", "end"]


ClientMessage = Annotated[
    QuestionMessage | TaskMessage | ResetMessage | SpeechMessage | TalkMessage,
    Field(discriminator="type"),
]
_CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_TYPES = ("question", "task", "reset", "speech", "talk")


def parse_client_message(data: str | bytes) -> ClientMessage:
    """One data-channel message from a client, or :class:`ProtocolError` saying what is
    wrong with it (too large, not JSON, unknown type, a bad field)."""
    size = len(data.encode("utf-8", "replace") if isinstance(data, str) else data)
    if size > MAX_CLIENT_MESSAGE_BYTES:
        raise ProtocolError(
            "message_too_large", f"messages are at most {MAX_CLIENT_MESSAGE_BYTES} bytes"
        )
    if isinstance(data, bytes):
        raise ProtocolError("bad_message", "messages are JSON text, not binary")
    try:
        return _CLIENT_MESSAGE.validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise ProtocolError("bad_json", "the message is not valid JSON") from exc
        if err["type"] in ("union_tag_invalid", "union_tag_not_found", "model_type"):
            known = ", ".join(CLIENT_TYPES)
            raise ProtocolError("unknown_type", f"a message needs a 'type' among: {known}") from exc
        field = ".".join(str(p) for p in err["loc"][1:]) or "(message)"
        raise ProtocolError("bad_message", f"field '{field}': {err['msg']}") from exc


# -- server -> client -------------------------------------------------------------------


class TaskInfo(_Wire):
    id: str
    title: str
    steps: list[str]

    @classmethod
    def of(cls, task: TaskContext) -> TaskInfo:
        return cls(id=task.id, title=task.title, steps=list(task.steps))


class VoiceInfo(_Wire):
    id: str
    label: str


class SpeechInfo(_Wire):
    """The session's voice; in ``hello`` when the session sends audio."""

    engine: str
    voices: list[VoiceInfo]
    voice: str
    rate_wpm: int
    muted: bool


class ListeningInfo(_Wire):
    """The session listens to the audio the client sends; in ``hello`` when it does."""

    model: str  # the speech recogniser
    max_utterance_s: float  # an utterance this long is cut and transcribed
    gate_while_speaking: bool  # the microphone is not heard while the assistant speaks
    barge_in: bool = True  # the person's voice stops the assistant's (talk start always does)


class HelloEvent(_Wire):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    session: str
    task: TaskInfo
    engine: str
    speech: SpeechInfo | None = None  # None: no audio track (none offered, or speech off)
    listening: ListeningInfo | None = None  # None: no audio sent, or listening off


class TaskEvent(_Wire):
    type: Literal["task"] = "task"
    task: TaskInfo


class GuidanceEvent(_Wire):
    type: Literal["guidance"] = "guidance"
    current_step: str
    next_step: str
    warning: str | None
    current_index: int | None  # 0-based into the task's steps; None: not one of them
    next_index: int | None  # None also when the task is complete
    done: list[int]  # steps completed, 0-based
    clip_start: float  # seconds on the session clock
    clip_end: float
    frames: int
    latency_ms: float  # the engine's time for this answer


class AnswerEvent(_Wire):
    type: Literal["answer"] = "answer"
    id: str
    final: bool
    delta: str | None = None  # a piece of the answer (final: false)
    text: str | None = None  # the whole answer (final: true)


class TokenCount(_Wire):
    prompt: int
    completion: int


class StateEvent(_Wire):
    type: Literal["state"] = "state"
    frames_received: int
    frames_sampled: int
    buffered: int
    model_busy: bool
    last_latency_ms: float | None
    tokens: TokenCount | None = None  # this session's so far; None: the engine reports none
    cost_usd: float | None = None  # at engine.price_per_mtok_*; None: no price configured


class SpeechEvent(_Wire):
    """A sentence starts or ends playing on the audio track. An ``end`` with ``interrupted``
    was cut before its last word: the person started talking (barge-in; the rest of that
    answer is not spoken), or mute, a reset, a task switch."""

    type: Literal["speech"] = "speech"
    state: Literal["start", "end"]
    text: str
    kind: Literal["guidance", "answer"]
    id: str | None = None  # the question an answer's sentence belongs to
    interrupted: bool = False  # end: the sentence was cut


class TranscriptEvent(_Wire):
    """What the person said into the microphone: partial while they speak, then final at the
    end of the utterance. A final with text is answered as a question with the same ``id``."""

    type: Literal["transcript"] = "transcript"
    id: str  # the utterance; the answer to it comes with this id
    final: bool
    text: str  # final and empty: nothing was recognised (no question is asked)
    audio_s: float  # seconds of speech transcribed
    # final: how it ended: silence, cut at max_length, the audio stopped (ended), or the
    # push-to-talk button was released (released)
    ended: Literal["silence", "max_length", "ended", "released"] | None = None
    latency_ms: float | None = None  # final: from the end of the utterance to this event


class ErrorEvent(_Wire):
    type: Literal["error"] = "error"
    code: str
    message: str
    id: str | None = None  # the question it concerns, if any


ServerEvent = (
    HelloEvent
    | TaskEvent
    | GuidanceEvent
    | AnswerEvent
    | StateEvent
    | SpeechEvent
    | TranscriptEvent
    | ErrorEvent
)
