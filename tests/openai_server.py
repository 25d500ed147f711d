"""A real HTTP server on loopback speaking the OpenAI chat-completions and audio wire protocol.

Tests script it per request and inspect what it received::

    async with OpenAIServer() as server:
        server.script(http_error(500), ok())
        client = AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        ...
        assert len(server.requests) == 2

Each ``POST /v1/chat/completions`` consumes the next scripted behaviour (``server.default``
once the queue is empty); ``stream: true`` is answered with server-sent events as the real
API sends them (``data: {chunk}`` lines, then ``data: [DONE]``). ``GET /v1/models`` lists
``server.model_id``. Usage numbers follow OpenAI's rules of thumb (text ~4 characters per
token, 85 tokens per low-detail image) and every response's usage is kept in ``usages``.
A client that closes a chat request's connection before its answer ended (a cancelled
stream) is seen within a few milliseconds: ``disconnects`` records the request's index and
the loop time, and a hold, hang or slow first token ends there.

``POST /v1/audio/transcriptions`` (multipart: ``file``, ``model``, ``response_format``,
``timestamp_granularities[]``) records every upload in ``uploads`` (size, filename, model,
decoded duration) and consumes its own queue (``script_transcriptions``, then
``transcription_default``); the error/hang/hold/malformed behaviours work as for chat. The body
is read as it arrives (``upload_bytes_received`` counts it, and ``wait_until`` sees it grow), then
parsed with the standard library, whatever pieces it came in. A file
over ``max_upload_bytes`` is refused with 413 before any behaviour is consumed, as the real API
does. By default the answer has one segment per ``segment_s`` seconds of the decoded upload,
texted ``"<filename> #<k>"``; ``transcribed(segments)`` scripts explicit segments.

``POST /v1/audio/speech`` (JSON: ``model``, ``input``, ``voice``, ``response_format``,
``speed``, ``instructions``) is validated as the real API does (400 with an OpenAI error
body for an unknown voice, an empty or over-long input, a speed outside 0.25-4) and recorded
in ``speech_requests``; it consumes its own queue (``script_speech``, then ``speech_default``).
An "ok" answer is real speech of the input (eSpeak NG, speed scaling the rate), streamed in
chunks as ``pcm`` (16-bit little-endian mono at 24 kHz, no header) or ``wav``; the compressed
formats (mp3, opus, aac, flac) are refused with 400 by this fake.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import json
import math
import re
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import av
import numpy as np
from aiohttp import web

from lavia_live.speech.synthesis import resample
from lavia_live.speech.tts import TTSOptions, synthesize

VALID_GUIDANCE = json.dumps(
    {"current_step": "Loosen the drain plug.", "next_step": "Drain the oil.", "warning": None}
)


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one request; build with the helpers below."""

    kind: Literal["ok", "error", "hang", "hold", "malformed"]
    content: str = VALID_GUIDANCE
    status: int = 200
    message: str = ""
    retry_after: float | None = None
    seconds: float = 0.0
    release: asyncio.Event | None = None
    then: Behaviour | None = None
    usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens) override
    segments: tuple[tuple[float, float, str], ...] | None = (
        None  # transcriptions: (start, end, text)
    )
    first_token_s: float = 0.0  # streaming: pause after the role chunk, before any content
    cut_after: int | None = None  # streaming: drop the connection after this many pieces


def ok(content: str = VALID_GUIDANCE, usage: tuple[int, int] | None = None) -> Behaviour:
    """A valid completion whose message content is ``content`` (default: valid guidance)."""
    return Behaviour("ok", content=content, usage=usage)


def content(text: str) -> Behaviour:
    """A valid completion carrying arbitrary text, e.g. an answer of the wrong schema."""
    return Behaviour("ok", content=text)


def http_error(status: int, message: str = "", retry_after: float | None = None) -> Behaviour:
    """An error status with an OpenAI-style error body (and a Retry-After header if given)."""
    return Behaviour(
        "error",
        status=status,
        message=message or f"scripted error {status}",
        retry_after=retry_after,
    )


def slow_first_token(seconds: float, text: str = VALID_GUIDANCE) -> Behaviour:
    """A streamed answer whose headers and role chunk come at once and whose first content
    comes ``seconds`` later (or never, if the server closes first): a slow prefill."""
    return Behaviour("ok", content=text, first_token_s=seconds)


def cut(text: str = VALID_GUIDANCE, after: int = 2) -> Behaviour:
    """A streamed answer whose connection drops after ``after`` content pieces, with no
    final chunk and no ``[DONE]``: a server that dies mid-answer."""
    return Behaviour("ok", content=text, cut_after=after)


def hang(seconds: float) -> Behaviour:
    """Answer nothing for ``seconds`` (or until the server closes), then 504: client timeouts."""
    return Behaviour("hang", seconds=seconds)


def hold(release: asyncio.Event, then: Behaviour | None = None) -> Behaviour:
    """Hold the request until the test sets ``release``, then answer as ``then`` (ok)."""
    return Behaviour("hold", release=release, then=then)


def transcribed(segments: tuple[tuple[float, float, str], ...] | None = None) -> Behaviour:
    """A transcription: these (start, end, text) segments, or by default segments derived
    from the decoded upload (one per ``server.segment_s`` seconds)."""
    return Behaviour("ok", segments=segments)


def malformed_json() -> Behaviour:
    """Status 200 with a JSON content type and a body that is not JSON."""
    return Behaviour("malformed")


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # loop time of arrival

    def content_parts(self) -> list[dict[str, Any]]:
        """All content parts of all messages, in order."""
        parts: list[dict[str, Any]] = []
        for message in self.body.get("messages", []):
            value = message.get("content")
            if isinstance(value, str):
                parts.append({"type": "text", "text": value})
            elif isinstance(value, list):
                parts.extend(value)
        return parts

    def image_urls(self) -> list[str]:
        return [p["image_url"]["url"] for p in self.content_parts() if p["type"] == "image_url"]

    def text(self) -> str:
        return "".join(p["text"] for p in self.content_parts() if p["type"] == "text")


@dataclass(frozen=True)
class ReceivedUpload:
    """One ``POST /v1/audio/transcriptions``; ``duration`` is None if the file did not decode."""

    path: str
    filename: str
    size: int  # bytes of the uploaded file
    data: bytes
    fields: dict[str, list[str]]  # the non-file form fields, e.g. model, response_format
    headers: dict[str, str]
    duration: float | None
    accepted: bool  # False when refused with 413 for exceeding max_upload_bytes
    at: float  # loop time of arrival

    @property
    def model(self) -> str:
        return self.fields.get("model", [""])[0]


@dataclass
class OpenAIServer:
    """Scripted OpenAI-compatible server on 127.0.0.1 (a free port); an async context manager."""

    model_id: str = "test-vlm"
    default: Behaviour = field(default_factory=ok)
    requests: list[ReceivedRequest] = field(default_factory=list)
    usages: list[tuple[int, int]] = field(default_factory=list)
    disconnects: list[tuple[int, float]] = field(default_factory=list)  # (request, loop time)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0
    transcription_default: Behaviour = field(default_factory=transcribed)
    uploads: list[ReceivedUpload] = field(default_factory=list)
    upload_bytes_received: int = 0  # body bytes of transcription requests read so far
    max_upload_bytes: int = 25 * 1024 * 1024  # OpenAI's per-file limit
    segment_s: float = 2.0  # length of the default transcription's segments
    speech_requests: list[ReceivedRequest] = field(default_factory=list)
    speech_default: Behaviour = field(default_factory=ok)
    _speech_queue: deque[Behaviour] = field(default_factory=deque)
    _queue: deque[Behaviour] = field(default_factory=deque)
    _transcription_queue: deque[Behaviour] = field(default_factory=deque)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        self._queue.extend(behaviours)

    def script_transcriptions(self, *behaviours: Behaviour) -> None:
        self._transcription_queue.extend(behaviours)

    def script_speech(self, *behaviours: Behaviour) -> None:
        self._speech_queue.extend(behaviours)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds; it is checked whenever a request arrives or ends
        and whenever a piece of an upload's body is read."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)

    async def start(self) -> None:
        app = web.Application(client_max_size=max(256 << 20, 2 * self.max_upload_bytes))
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcription)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": "lavia-test"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        loop = asyncio.get_running_loop()
        self.requests.append(
            ReceivedRequest(request.path, body, dict(request.headers), loop.time())
        )
        behaviour = self._queue.popleft() if self._queue else self.default
        gone = asyncio.Event()
        watcher = asyncio.create_task(self._watch(request, len(self.requests) - 1, gone))
        await self._count(+1)
        try:
            return await self._answer(request, body, behaviour, gone)
        finally:
            watcher.cancel()  # first: a "cut" answer drops the connection itself
            await self._count(-1)

    async def _watch(self, request: web.Request, index: int, gone: asyncio.Event) -> None:
        """Record the client closing request ``index``'s connection (polled every 5 ms)."""
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.005)
        gone.set()
        async with self._changed:
            self.disconnects.append((index, asyncio.get_running_loop().time()))
            self._changed.notify_all()

    async def _count(self, delta: int) -> None:
        async with self._changed:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()

    async def _transcription(self, request: web.Request) -> web.StreamResponse:
        # Read the whole body as it comes, then parse it: aiohttp's multipart reader (behind
        # `request.post()`) calls the deprecated `unread_data()` when a read shorter than the
        # boundary is followed by one longer than its chunk, i.e. depending on how the body
        # arrives, and warnings-as-errors turns that into a 500.
        body = bytearray()
        async for piece in request.content.iter_any():
            body += piece
            async with self._changed:
                self.upload_bytes_received += len(piece)
                self._changed.notify_all()
        content_type = request.headers.get("Content-Type", "")
        form = await asyncio.to_thread(_parse_multipart, content_type, bytes(body))
        if form is None or "file" not in form.files:
            return _error(400, "'file' is a required property (multipart file field)")
        filename, data = form.files["file"]
        fields = form.fields
        accepted = len(data) <= self.max_upload_bytes
        duration = await asyncio.to_thread(_audio_duration, data) if accepted else None
        loop = asyncio.get_running_loop()
        received = ReceivedUpload(
            request.path,
            filename,
            len(data),
            data,
            fields,
            dict(request.headers),
            duration,
            accepted,
            loop.time(),
        )
        self.uploads.append(received)
        if not accepted:
            message = (
                f"Maximum content size limit ({self.max_upload_bytes}) exceeded "
                f"({len(data)} bytes read)"
            )
            error = {"message": message, "type": "server_error", "param": None, "code": None}
            return web.json_response({"error": error}, status=413)
        behaviour = (
            self._transcription_queue.popleft()
            if self._transcription_queue
            else self.transcription_default
        )
        await self._count(+1)
        try:
            return await self._respond(
                behaviour, transcribed(), lambda b: self._transcript(received, b)
            )
        finally:
            await self._count(-1)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        loop = asyncio.get_running_loop()
        self.speech_requests.append(
            ReceivedRequest(request.path, body, dict(request.headers), loop.time())
        )
        problem = _speech_problem(body)
        if problem is not None:
            return _error(400, problem)
        behaviour = self._speech_queue.popleft() if self._speech_queue else self.speech_default
        await self._count(+1)
        try:
            return await self._respond(behaviour, ok(), lambda _: self._speech_audio(request, body))
        finally:
            await self._count(-1)

    async def _speech_audio(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response_format = body.get("response_format", "mp3")
        if response_format not in ("pcm", "wav"):
            return _error(400, f"this fake speaks pcm and wav, not {response_format}")
        wpm = min(450, max(80, round(160 * float(body.get("speed", 1.0)))))
        pcm = await asyncio.to_thread(_speak_24k, body["input"], wpm)
        data = pcm.astype("<i2").tobytes()
        if response_format == "wav":
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(SPEECH_PCM_RATE)
                out.writeframes(data)
            data = buffer.getvalue()
        content_type = "audio/pcm" if response_format == "pcm" else "audio/wav"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data), 4800):  # 100 ms of pcm per chunk, as it streams
            await response.write(data[start : start + 4800])
        await response.write_eof()
        return response

    async def _transcript(self, upload: ReceivedUpload, behaviour: Behaviour) -> web.Response:
        if upload.duration is None:
            return _error(
                400,
                "Invalid file format. Supported formats: flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm",
            )
        segments = behaviour.segments
        if segments is None:
            n = math.ceil(upload.duration / self.segment_s)
            segments = tuple(
                (
                    k * self.segment_s,
                    min(upload.duration, (k + 1) * self.segment_s),
                    f"{upload.filename} #{k}",
                )
                for k in range(n)
            )
        text = " ".join(t.strip() for _, _, t in segments)
        response_format = upload.fields.get("response_format", ["json"])[0]
        if response_format == "text":
            return web.Response(text=text)
        if response_format != "verbose_json":
            return web.json_response({"text": text})
        return web.json_response(_verbose_transcription(upload.duration, text, segments))

    async def _answer(
        self, request: web.Request, body: dict[str, Any], behaviour: Behaviour, gone: asyncio.Event
    ) -> web.StreamResponse:
        return await self._respond(
            behaviour, ok(), lambda b: self._chat_answer(request, body, b, gone), gone
        )

    async def _respond(
        self,
        behaviour: Behaviour,
        fallback: Behaviour,
        answer: Callable[[Behaviour], Awaitable[web.StreamResponse]],
        gone: asyncio.Event | None = None,
    ) -> web.StreamResponse:
        """Play the error/hang/hold/malformed behaviours; ``answer`` the "ok" ones. A hold or
        hang ends early when the server closes or the client is ``gone``."""
        ends = [self._closing] if gone is None else [self._closing, gone]
        if behaviour.kind == "hold":
            assert behaviour.release is not None
            await _first(behaviour.release.wait(), *(e.wait() for e in ends))
            if self._closing.is_set() or (gone is not None and gone.is_set()):
                return _error(503, "server closing or client gone")
            return await self._respond(behaviour.then or fallback, fallback, answer, gone)
        if behaviour.kind == "hang":
            await _first(asyncio.sleep(behaviour.seconds), *(e.wait() for e in ends))
            return _error(504, "hung on purpose")
        if behaviour.kind == "error":
            headers = (
                {}
                if behaviour.retry_after is None
                else {"Retry-After": f"{behaviour.retry_after:g}"}
            )
            return _error(behaviour.status, behaviour.message, headers)
        if behaviour.kind == "malformed":
            return web.Response(
                status=200,
                text='{"id": "chatcmpl-x", "choices": [',
                content_type="application/json",
            )
        return await answer(behaviour)

    async def _chat_answer(
        self, request: web.Request, body: dict[str, Any], behaviour: Behaviour, gone: asyncio.Event
    ) -> web.StreamResponse:
        usage = behaviour.usage or (_prompt_tokens(body), max(1, len(behaviour.content) // 4))
        self.usages.append(usage)
        if body.get("stream"):
            return await self._stream(request, body, behaviour, usage, gone)
        return web.json_response(_completion(body, self.model_id, behaviour.content, usage))

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        behaviour: Behaviour,
        usage: tuple[int, int],
        gone: asyncio.Event,
    ) -> web.StreamResponse:
        """Server-sent events as the real API sends them; ``first_token_s`` pauses before the
        content (ended early when the client is ``gone``) and ``cut_after`` drops the
        connection mid-answer (``Behaviour``)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", self.model_id),
        }
        pieces = [{"content": piece} for piece in re.findall(r"\s*\S+|\s+$", behaviour.content)]
        if behaviour.cut_after is not None:
            pieces = pieces[: behaviour.cut_after]
        events = [{"role": "assistant", "content": ""}, *pieces]
        try:
            for k, delta in enumerate(events):
                if k == 1 and behaviour.first_token_s > 0:
                    await _first(
                        asyncio.sleep(behaviour.first_token_s), self._closing.wait(), gone.wait()
                    )
                if gone.is_set():
                    return response
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if behaviour.cut_after is not None:
                assert request.transport is not None
                request.transport.abort()  # no final chunk, no [DONE], no end of the body
                return response
            final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await response.write(f"data: {json.dumps(final)}\n\n".encode())
            if (body.get("stream_options") or {}).get("include_usage"):
                tail = {**base, "choices": [], "usage": _usage(usage)}
                await response.write(f"data: {json.dumps(tail)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client hung up (e.g. its read timeout)
            pass
        return response


@dataclass(frozen=True)
class _Form:
    fields: dict[str, list[str]]  # non-file fields, every value in order
    files: dict[str, tuple[str, bytes]]  # file fields: name -> (filename, data)


def _parse_multipart(content_type: str, body: bytes) -> _Form | None:
    """A ``multipart/form-data`` body parsed with the standard library's email parser (which
    keeps binary parts byte for byte); None if it is not multipart."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    fields: dict[str, list[str]] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, data)
        else:
            fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
    return _Form(fields, files)


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


SPEECH_PCM_RATE = 24000
SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
SPEECH_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
)  # fmt: skip
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


def _speech_problem(body: dict[str, Any]) -> str | None:
    """The real API's 400 message for a speech request it refuses; None if acceptable."""
    for name in ("model", "input", "voice"):
        if not isinstance(body.get(name), str):
            return f"'{name}' is a required property"
    if body["model"] not in SPEECH_MODELS:
        return f"Invalid model: {body['model']}"
    if not body["input"].strip():
        return "'input' must not be empty"
    if len(body["input"]) > 4096:
        return "'input' is too long: at most 4096 characters"
    if body["voice"] not in SPEECH_VOICES:
        return f"Invalid value: '{body['voice']}'. Supported values are: {', '.join(SPEECH_VOICES)}"
    if body.get("response_format", "mp3") not in SPEECH_FORMATS:
        return f"Invalid value: '{body['response_format']}' for response_format"
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        return f"Invalid speed {speed!r}: it must be between 0.25 and 4.0"
    if "instructions" in body and body["model"] != "gpt-4o-mini-tts":
        return "instructions are not supported with this model"
    return None


def _speak_24k(text: str, wpm: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Real speech for the fake: eSpeak NG, resampled to the API's 24 kHz."""
    return resample(synthesize(text, TTSOptions(words_per_minute=wpm)), SPEECH_PCM_RATE)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, or the 400 answer the API gives for anything else."""
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    return body


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = (
        "rate_limit_error"
        if status == 429
        else "invalid_request_error"
        if status < 500
        else "server_error"
    )
    body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return web.json_response(body, status=status, headers=headers)


def _prompt_tokens(body: dict[str, Any]) -> int:
    request = ReceivedRequest("", body, {}, 0.0)
    return 7 + len(request.text()) // 4 + 85 * len(request.image_urls())


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(
    body: dict[str, Any], model_id: str, text: str, usage: tuple[int, int]
) -> dict[str, Any]:
    message = {"role": "assistant", "content": text, "refusal": None}
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", model_id),
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(usage),
    }


def _audio_duration(data: bytes) -> float | None:
    """Seconds of audio in the first audio track of ``data``; None if it does not decode."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            samples, rate = 0, 0
            for frame in container.decode(audio=0):
                samples += frame.samples
                rate = frame.sample_rate
    except (av.FFmpegError, ValueError):
        return None
    return samples / rate if rate else None


def _verbose_transcription(
    duration: float, text: str, segments: tuple[tuple[float, float, str], ...]
) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": "english",
        "duration": duration,
        "text": text,
        "segments": [
            {
                "id": k,
                "seek": 0,
                "start": start,
                "end": end,
                "text": " " + words.strip(),
                "tokens": [50364, 50414],
                "temperature": 0.0,
                "avg_logprob": -0.25,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
            for k, (start, end, words) in enumerate(segments)
        ],
        "usage": {"type": "duration", "seconds": math.ceil(duration)},
    }
