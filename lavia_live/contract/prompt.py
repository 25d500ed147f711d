"""The one prompt builder: annotation, training, evaluation and serving all call it.

A prompt is one user turn made of parts, fixed part first so prefix caches (SGLang's radix
cache, a local KV cache) reuse it across requests of a session::

    [text: instructions + task context]  [image] x N (oldest first)  [text: request]

The same parts render three ways: chat messages with image parts for OpenAI-compatible
servers, chat messages with ``{"type": "image"}`` for Hugging Face processors, and the
LLaVA record text with one ``<image>`` line per frame. :func:`parse_llava_text` turns the
record text back into the same parts, so a trainer sees exactly what the server sends;
:func:`prompt_from_openai_messages` does the same for the chat messages (``lavia
model-server`` reads its requests with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lavia_live.contract.guidance import NO_WARNING, TASK_COMPLETE
from lavia_live.contract.tasks import TaskContext

PROMPT_VERSION = "lavia-live-prompt-1"
IMAGE_TAG = "<image>"

PromptKind = Literal["guidance", "question"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    index: int  # position of the frame in the clip, 0 = oldest


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Prompt:
    """One user turn; ``kind`` says whether the answer is guidance or free text."""

    parts: tuple[Part, ...]
    kind: PromptKind
    version: str = PROMPT_VERSION

    @property
    def n_images(self) -> int:
        return sum(isinstance(p, ImagePart) for p in self.parts)

    def task_steps(self) -> tuple[str, ...]:
        """The task's steps as this prompt lists them (:func:`task_context_text`); empty
        when it lists none. Engines use them to keep guidance within the task."""
        first = self.parts[0] if self.parts else None
        if not isinstance(first, TextPart):
            return ()
        lines = first.text.split("\n")
        if "Steps:" not in lines:
            return ()
        steps: list[str] = []
        for number, line in enumerate(lines[lines.index("Steps:") + 1 :], start=1):
            label = f"{number}. "
            if not line.startswith(label):
                break
            steps.append(line[len(label) :])
        return tuple(steps)

    def openai_messages(
        self, image_urls: Sequence[str], detail: str | None = None
    ) -> list[dict[str, Any]]:
        """Chat-completions messages; ``image_urls[i]`` (e.g. a JPEG data URL) is frame i.
        ``detail`` ("low", "high", "auto") is OpenAI's per-image detail; None omits it."""
        if len(image_urls) != self.n_images:
            raise ValueError(f"prompt has {self.n_images} images, got {len(image_urls)} URLs")
        content: list[dict[str, Any]] = []
        for part in self.parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            else:
                image: dict[str, str] = {"url": image_urls[part.index]}
                if detail is not None:
                    image["detail"] = detail
                content.append({"type": "image_url", "image_url": image})
        return [{"role": "user", "content": content}]

    def hf_messages(self, answer: str | None = None) -> list[dict[str, Any]]:
        """Messages for a Hugging Face processor's chat template (images passed separately,
        in clip order); with ``answer``, the assistant turn a training example ends with."""
        content: list[dict[str, Any]] = [
            {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
            for p in self.parts
        ]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def llava_text(self) -> str:
        """The human turn of a LLaVA/ShareGPT record: one ``<image>`` line per frame."""
        out: list[str] = []
        for part in self.parts:
            out.append(part.text if isinstance(part, TextPart) else IMAGE_TAG + "\n")
        return "".join(out)


def parse_llava_text(value: str, kind: PromptKind = "guidance") -> Prompt:
    """Rebuild prompt parts from a record's human turn (inverse of :meth:`Prompt.llava_text`)."""
    parts: list[Part] = []
    chunks = value.split(IMAGE_TAG)
    for i, chunk in enumerate(chunks):
        if i > 0:
            parts.append(ImagePart(i - 1))
            chunk = chunk.removeprefix("\n")
        if chunk:
            parts.append(TextPart(chunk))
    return Prompt(tuple(parts), kind)


def task_context_text(task: TaskContext) -> str:
    """The fixed part of every prompt for a task: instructions and the task context."""
    lines = [
        "You are a task assistant watching a person through their camera. "
        "Frames arrive one per second, oldest first.",
        f"Task: {task.title}",
    ]
    if task.steps:
        lines.append("Steps:")
        lines.extend(f"{i}. {step}" for i, step in enumerate(task.steps, start=1))
    if task.guideline:
        lines.append(f"Guideline: {task.guideline}")
    return "\n".join(lines) + "\n"


_GUIDANCE_REQUEST = (
    "Which step is the person doing now, which step comes next, and is there a visible "
    "mistake? Use the step texts from the list. Answer in exactly this format:\n"
    "Current step: <step>\nNext step: <step, or '" + TASK_COMPLETE + "'>\n"
    "Warning: <the mistake, or '" + NO_WARNING + "'>"
)


def _frames_line(n_frames: int) -> str:
    if n_frames == 0:
        return "No camera frames have arrived yet."
    return f"The {n_frames} frames above cover the last {n_frames} seconds."


def build_guidance_prompt(task: TaskContext, n_frames: int, history: Sequence[str] = ()) -> Prompt:
    """Ask for the current step, next step and any warning for a clip of ``n_frames``."""
    request = [_frames_line(n_frames)]
    if history:
        request.append("Earlier guidance: " + " | ".join(history))
    request.append(_GUIDANCE_REQUEST)
    return _assemble(task, n_frames, "\n".join(request), "guidance")


HISTORY_LINES = 3
"""Earlier guidance lines a question prompt carries (the live tracker's latest)."""


def history_line(current_step: str, next_step: str, warning: str | None = None) -> str:
    """One line of earlier guidance, as question prompts carry it."""
    line = f"now: {current_step}; next: {next_step}"
    return line + (f"; warning: {warning}" if warning else "")


def build_question_prompt(
    task: TaskContext, n_frames: int, question: str, history: Sequence[str] = ()
) -> Prompt:
    """Answer a question the person asked about the task, given the current clip."""
    request = [_frames_line(n_frames)]
    if history:
        request.append("Earlier guidance: " + " | ".join(history))
    request.append(f"The person asks: {' '.join(question.split())}")
    request.append("Answer briefly and concretely, in one or two sentences.")
    return _assemble(task, n_frames, "\n".join(request), "question")


def _assemble(task: TaskContext, n_frames: int, request: str, kind: PromptKind) -> Prompt:
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    fixed = task_context_text(task)
    if n_frames == 0:  # one text part, as the record text of such a prompt parses back
        return Prompt((TextPart(fixed + request),), kind)
    parts: list[Part] = [TextPart(fixed)]
    parts.extend(ImagePart(i) for i in range(n_frames))
    parts.append(TextPart(request))
    return Prompt(tuple(parts), kind)


def prompt_from_openai_messages(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[Prompt, list[str]]:
    """The prompt and its image URLs (frame order) that chat-completions ``messages`` carry:
    the inverse of :meth:`Prompt.openai_messages` (``detail`` aside).

    Any other chat (a system message, earlier turns, string contents) is read as one turn:
    its texts in order (adjacent ones joined by a line break), its images in order. The
    kind is "guidance" when the last text ends with the guidance request that
    :func:`build_guidance_prompt` writes, else "question". :class:`ValueError` names a
    content that is neither text nor image URL parts.
    """
    parts: list[Part] = []
    urls: list[str] = []
    for m, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        elif content is None:
            content = []
        elif not isinstance(content, list):
            raise ValueError(f"messages[{m}].content: a string or a list of parts, not {content!r}")
        for i, piece in enumerate(content):
            where = f"messages[{m}].content[{i}]"
            kind = piece.get("type") if isinstance(piece, Mapping) else None
            if kind == "text" and isinstance(piece.get("text"), str):
                text = piece["text"]
                if text and parts and isinstance(parts[-1], TextPart):
                    parts[-1] = TextPart(parts[-1].text + "\n" + text)
                elif text:
                    parts.append(TextPart(text))
            elif kind == "image_url" and isinstance(piece.get("image_url"), Mapping):
                url = piece["image_url"].get("url")
                if not isinstance(url, str):
                    raise ValueError(f"{where}.image_url: 'url' must be a string")
                parts.append(ImagePart(len(urls)))
                urls.append(url)
            else:
                raise ValueError(
                    f"{where}: expected {{'type': 'text', 'text': ...}} or "
                    f"{{'type': 'image_url', 'image_url': {{'url': ...}}}}, got {piece!r:.80}"
                )
    texts = [p.text for p in parts if isinstance(p, TextPart)]
    guidance = bool(texts) and texts[-1].endswith(_GUIDANCE_REQUEST)
    return Prompt(tuple(parts), "guidance" if guidance else "question"), urls
