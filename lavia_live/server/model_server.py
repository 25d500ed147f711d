"""``lavia model-server``: an in-process model (the embedded one, or a checkpoint folder)
served over the OpenAI protocol, so one GPU box serves several ``lavia serve`` processes,
and whatever speaks to SGLang can speak to it.

Routes: ``GET /v1/models`` and ``/v1/models/{id}``, ``POST /v1/chat/completions``
(streaming and not; :mod:`.chat_completions`), ``GET /health`` (200 once serving, as
SGLang's). Every error is an OpenAI-shaped JSON body. A request's messages become the
contract's prompt again, so the engine decodes guidance held to the task's steps exactly as
it does in-process.

``engine.max_concurrency`` requests run at once (for an in-process model, ``engine.max_batch``
guidance requests batched together, else one); up to
``model_server.queue_size`` more wait their turn, and beyond that a request gets 429 with
``Retry-After`` (the mean time of recent requests times the queue ahead). A client that
goes away cancels its request: the engine's stream is closed, which ends the generation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from lavia_live.config.settings import ModelServerSettings
from lavia_live.engines.base import EngineError, Usage
from lavia_live.engines.local import LocalEngine
from lavia_live.server.app import site_url
from lavia_live.server.chat_completions import (
    DONE,
    ChatAPIError,
    ChatCall,
    chunk_event,
    completion,
    event,
    frames_from_urls,
    read_chat_request,
    usage,
    usage_event,
)

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0  # requests still running at shutdown get this long, then are cancelled
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = web.AppKey("max_body", int)  # bytes a request body may have


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as OpenAI sends it: ``{"error": {message, type, param, code}}``."""
    try:
        return await handler(request)
    except ChatAPIError as exc:
        error = exc
    except EngineError as exc:
        log.warning("the model failed: %s", exc)
        error = ChatAPIError(500, f"The model failed: {exc}", type="server_error")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason
        headers = {k: v for k, v in exc.headers.items() if k == "Allow"}
        if exc.status == 404:
            message = f"Invalid URL ({request.method} {request.path})"
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed for {request.path}"
        elif exc.status == 413:
            message = f"The request body is over {request.app[MAX_BODY]} bytes."
        error = ChatAPIError(exc.status, message, headers=headers)
    return web.json_response(error.body(), status=error.status, headers=error.headers)


class ModelServer:
    """Serves ``engine`` as the model ``model_id`` (default: the model folder's name,
    ``embedded`` for the embedded model). ``running``, ``waiting`` and ``abandoned``
    (requests whose client went away) tell what it is doing."""

    def __init__(
        self, engine: LocalEngine, settings: ModelServerSettings, model_id: str | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.model_id = model_id or settings.model_id or Path(engine.loaded.path).resolve().name
        self.running = 0
        self.waiting = 0
        self.abandoned = 0
        self.url = ""
        self._slots = asyncio.Semaphore(engine.max_concurrency)
        self._mean_s = 1.0  # running mean of the time a request holds the model
        self._created = int(time.time())
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        max_body = int(self.settings.max_body_mb * 2**20)
        app = web.Application(client_max_size=max_body, middlewares=[openai_errors])
        app[MAX_BODY] = max_body
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 30000) -> str:
        """Listen (port 0: any free port); returns the base URL clients use (``.../v1``)."""
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,  # a client gone away cancels its request
            shutdown_timeout=SHUTDOWN_GRACE_S,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.url = site_url(site, host, port) + "/v1"
        return self.url

    async def stop(self) -> None:
        """Stop listening; requests still running after the grace period are cancelled."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routes ---------------------------------------------------------------------

    def _card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self._created,
            "owned_by": "lavia",
        }

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._card()]})

    async def _model(self, request: web.Request) -> web.Response:
        self._check_model(request.match_info["model"])
        return web.json_response(self._card())

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    def _check_model(self, model: str) -> None:
        if model != self.model_id:
            raise ChatAPIError(
                404,
                f"The model '{model}' does not exist: this server serves '{self.model_id}' "
                "(GET /v1/models).",
                param="model",
                code="model_not_found",
            )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        call = read_chat_request(
            await request.read(),  # 413 beyond client_max_size
            max_images=self.settings.max_images,
            default_max_tokens=self.settings.max_tokens,
        )
        self._check_model(call.model)
        frames = await asyncio.to_thread(frames_from_urls, call.image_urls)
        started = time.monotonic()
        try:
            async with self._turn():
                if call.stream:
                    response = await self._stream(request, call, frames)
                else:
                    response = await self._complete(call, frames)
        except asyncio.CancelledError:  # the client went away (handler_cancellation), or shutdown
            self._went_away(request, call)
            raise
        log.info(
            "%s: %s answer on %d frames in %.2f s",
            call.id, call.prompt.kind, len(frames), time.monotonic() - started,
        )  # fmt: skip
        return response

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Hold one of the engine's slots, waiting in the queue for it; 429 if it is full."""
        capacity = self.engine.max_concurrency
        if self.running + self.waiting >= capacity + self.settings.queue_size:
            retry = max(1, math.ceil(self._mean_s * (self.waiting + 1) / capacity))
            raise ChatAPIError(
                429,
                f"The server is busy: {self.running} requests running and {self.waiting} "
                f"waiting. Retry after {retry} s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._mean_s += 0.2 * (time.monotonic() - started - self._mean_s)

    async def _complete(self, call: ChatCall, frames: list[bytes]) -> web.Response:
        counted = Usage()
        pieces = self.engine.stream(call.prompt, frames, replace(call.options, usage=counted))
        text = "".join([piece async for piece in pieces])
        used = usage(counted.prompt_tokens, counted.completion_tokens)
        return web.json_response(completion(call, text, self._finish(call, used), used))

    async def _stream(
        self, request: web.Request, call: ChatCall, frames: list[bytes]
    ) -> web.StreamResponse:
        counted = Usage()  # the engine's own token counts
        pieces = self.engine.stream(call.prompt, frames, replace(call.options, usage=counted))
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            # an engine error before any text is an HTTP error; after it, an error event
            piece = await anext(pieces, None)
            await response.prepare(request)
            await response.write(chunk_event(call, {"role": "assistant", "content": ""}))
            while piece is not None:
                await response.write(chunk_event(call, {"content": piece}))
                piece = await anext(pieces, None)
            used = usage(counted.prompt_tokens, counted.completion_tokens)
            await response.write(chunk_event(call, {}, self._finish(call, used)))
            if call.include_usage:
                await response.write(usage_event(call, used))
            await response.write(DONE)
            await response.write_eof()
        except EngineError as exc:
            if not response.prepared:
                raise
            log.warning("%s: the model failed mid-answer: %s", call.id, exc)
            failure = ChatAPIError(500, f"The model failed: {exc}", type="server_error")
            await response.write(event(failure.body()))
        except ConnectionResetError:  # written to a connection just closed
            self._went_away(request, call)
        finally:
            await _close(pieces)  # ends the generation if the client went away
        return response

    def _went_away(self, request: web.Request, call: ChatCall) -> None:
        # once per request: a write to the closed connection fails, and then aiohttp may
        # also cancel the handler while the generation is being closed
        if request.get(_ABANDONED):
            return
        request[_ABANDONED] = True
        self.abandoned += 1
        log.info("%s: cancelled (the client went away, or shutdown); generation stopped", call.id)

    @staticmethod
    def _finish(call: ChatCall, used: dict[str, int]) -> str:
        return "length" if used["completion_tokens"] >= call.options.max_tokens else "stop"


_ABANDONED = web.RequestKey("lavia_abandoned", bool)  # already counted as abandoned


async def _close(pieces: AsyncIterator[str]) -> None:
    close = getattr(pieces, "aclose", None)  # an async generator's
    if close is not None:
        await close()
