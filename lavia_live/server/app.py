"""The HTTP side of ``lavia serve``: the page, the offer/answer, health and metrics.

Routes: ``GET /`` (the client page) and ``/client/*`` (its files), ``GET /demo/video.mp4``,
``GET /api/tasks``, ``GET /api/config``, ``POST /offer`` (:mod:`.protocol`), ``GET /healthz``
and ``GET /metrics`` (Prometheus). :class:`LiveServer` owns the sessions, the scheduler that
shares the engine among them, the thread pool that converts frames, the speech
synthesizer with its own thread, and for voice questions the one speech recognition worker
(:class:`RecognitionWorker`) and the thread that runs every session's VAD;
:meth:`LiveServer.stop` closes every session before it returns.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription
from pydantic import ValidationError

from lavia_live import __version__
from lavia_live.config.settings import Settings
from lavia_live.contract.tasks import TaskContext, TaskLibrary
from lavia_live.engines.base import Engine
from lavia_live.engines.managed_server import ManagedEngine
from lavia_live.errors import TaskDefinitionError
from lavia_live.resources import shipped_path
from lavia_live.server.assistant import LiveAssistant, LoopOptions
from lavia_live.server.audio import SpeechTrack
from lavia_live.server.listener import Listener
from lavia_live.server.metrics import CONTENT_TYPE, Metrics
from lavia_live.server.protocol import (
    MAX_OFFER_BYTES,
    PROTOCOL_VERSION,
    OfferRequest,
    OfferResponse,
    TaskInfo,
    error_body,
)
from lavia_live.server.recognizer import RecognitionWorker, whisper_transcriber
from lavia_live.server.scheduler import Scheduler
from lavia_live.server.session import Session
from lavia_live.server.speaker import Speaker
from lavia_live.speech.synthesis import Synthesizer, open_synthesizer

log = logging.getLogger(__name__)

DEMO_VIDEO = "data/demo/demo_oil_change.mp4"
# What the page asks of the camera and its encoder: the assistant samples one frame a second
# and the server's cost per session follows the bitrate (benchmarks/live_sessions.py).
CAPTURE = {"width": 640, "height": 480, "frame_rate": 5, "max_bitrate_kbps": 300}
BODY_TIMEOUT_S = 10.0
OFFER_TIMEOUT_S = 15.0


def site_url(site: web.TCPSite, host: str, port: int, *, tls: bool = False) -> str:
    """The URL a started ``site`` is reached at: the port it really bound (``port`` 0 picks
    a free one), 127.0.0.1 for a site on every interface."""
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"{'https' if tls else 'http'}://{shown}:{bound}"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


class LiveServer:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        frame_max_side: int = 448,
        library: TaskLibrary | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.library = library or TaskLibrary.load(settings.tasks.folder)
        self.default_task = self.library.require(settings.tasks.default_task)
        self.options = LoopOptions.of(settings, frame_max_side)
        self.metrics = Metrics()
        self.sessions: dict[str, Session] = {}
        if isinstance(engine, ManagedEngine):  # its restarts reach every session as errors
            engine.server.on_status = self.report_to_sessions
        concurrency = settings.engine.concurrency or engine.max_concurrency
        self.scheduler = Scheduler(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lavia-frames")
        speech = settings.speech
        self.synthesizer: Synthesizer | None = open_synthesizer(speech) if speech.enabled else None
        # eSpeak NG serialises its calls; a cloud engine gets two requests in flight.
        tts_workers = 2 if speech.engine == "openai" else 1
        self._tts = ThreadPoolExecutor(max_workers=tts_workers, thread_name_prefix="lavia-tts")
        listening = settings.listening
        self.recognizer: RecognitionWorker | None = None
        if listening.enabled:
            transcribe, load = whisper_transcriber(listening)
            self.recognizer = RecognitionWorker(
                transcribe, queue_size=listening.queue_size, timeout_s=listening.timeout_s,
                load=load,
            )  # fmt: skip
        self._vad: ThreadPoolExecutor | None = None  # every session's VAD, while started
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._client = shipped_path("client")
        self._demo_video = shipped_path(DEMO_VIDEO)

    # -- lifecycle ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_OFFER_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_static("/client/", self._client)
        app.router.add_get("/demo/video.mp4", self._demo)
        app.router.add_get("/api/tasks", self._tasks)
        app.router.add_get("/api/config", self._config)
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 8080, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen (port 0: any free port); returns the URL to open. The speech recognition
        model is loaded first (:class:`~lavia_live.errors.SpeechError` when it cannot be)."""
        if self.recognizer is not None:
            await self.recognizer.start()
            self._vad = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lavia-vad")
        self.scheduler.start()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        self.url = site_url(site, host, port, tls=ssl_context is not None)
        return self.url

    async def stop(self) -> None:
        """Close every session, then stop listening and free the workers."""
        closing = [s.close("server shutting down") for s in list(self.sessions.values())]
        if closing:
            await asyncio.wait(closing)
        await self.scheduler.aclose()
        if self.recognizer is not None:
            await self.recognizer.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._executor.shutdown(wait=True)
        self._tts.shutdown(wait=True)
        if self._vad is not None:
            self._vad.shutdown(wait=True)
            self._vad = None
        if self.synthesizer is not None:
            self.synthesizer.close()

    # -- sessions -------------------------------------------------------------------

    def report_to_sessions(self, code: str, message: str) -> None:
        """An ``error`` event to every session (e.g. the model server restarting)."""
        for session in list(self.sessions.values()):
            session.assistant.report(code, message)

    def _assistant(self, session: Session, task: TaskContext) -> LiveAssistant:
        return LiveAssistant(
            session.sid,
            task,
            settings=self.settings,
            options=self.options,
            engine=self.engine,
            scheduler=self.scheduler,
            executor=self._executor,
            emit=session.send,
            metrics=self.metrics,
        )

    def _speaker(self, session: Session) -> Speaker:
        assert self.synthesizer is not None
        return Speaker(
            session.sid,
            self.synthesizer,
            self._tts,
            SpeechTrack(),
            session.send,
            session.assistant.report,
            self.settings.speech,
        )

    def _listener(self, session: Session) -> Listener:
        assert self.recognizer is not None and self._vad is not None
        return Listener(
            session.sid,
            self.settings.listening,
            self.recognizer,
            self._vad,
            session.send,
            session.assistant.ask,
            session.assistant.report,
            gated=session.assistant_speaking,
            metrics=self.metrics,
            ask_held=session.assistant.ask_held if self.settings.listening.answer_early else None,
        )

    def _closed(self, session: Session) -> None:
        if self.sessions.pop(session.sid, None) is not None:
            self.metrics.sessions.set(len(self.sessions))
            log.info("session closed: %s", session.close_reason, extra={"session": session.sid})

    def _authorised(self, request: web.Request) -> bool:
        token = self.settings.serve.token
        if token is None:
            return True
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        return hmac.compare_digest(given.encode(), expected.encode())

    async def _offer(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            self.metrics.errors.labels("unauthorized").inc()
            return _error(401, "unauthorized", "a valid 'Authorization: Bearer TOKEN' is needed")
        if (request.content_length or 0) > MAX_OFFER_BYTES:
            return _error(413, "too_large", f"an offer is at most {MAX_OFFER_BYTES} bytes")
        try:
            body = await asyncio.wait_for(request.content.read(MAX_OFFER_BYTES + 1), BODY_TIMEOUT_S)
        except TimeoutError:
            return _error(408, "timeout", f"the body did not arrive in {BODY_TIMEOUT_S:g} s")
        if len(body) > MAX_OFFER_BYTES:
            return _error(413, "too_large", f"an offer is at most {MAX_OFFER_BYTES} bytes")
        try:
            offer = OfferRequest.model_validate_json(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] == "json_invalid":
                return _error(400, "bad_json", "the body is not valid JSON")
            field = ".".join(str(p) for p in err["loc"]) or "(body)"
            return _error(400, "bad_request", f"field '{field}': {err['msg']}")
        try:
            task = self.library.require(offer.task or self.default_task.id)
        except TaskDefinitionError as exc:
            return _error(404, "unknown_task", str(exc))
        if "m=video" not in offer.sdp:
            return _error(400, "bad_sdp", "the offer has no video (m=video) section")
        if len(self.sessions) >= self.settings.serve.max_sessions:
            self.metrics.sessions_total.labels("refused").inc()
            limit = self.settings.serve.max_sessions
            return _error(503, "server_full", f"the server is at its limit of {limit} sessions")
        sid = secrets.token_urlsafe(8)
        session = Session(
            sid,
            self.settings.serve,
            self.library,
            task,
            self._assistant,
            self._closed,
            self._speaker if self.synthesizer is not None else None,
            self._listener if self.recognizer is not None else None,
        )
        self.sessions[sid] = session
        self.metrics.sessions.set(len(self.sessions))
        try:
            answer = await asyncio.wait_for(
                session.accept(RTCSessionDescription(sdp=offer.sdp, type="offer")),
                OFFER_TIMEOUT_S,
            )
        except TimeoutError:
            await session.close("answer timed out")
            return _error(504, "timeout", f"no answer could be made in {OFFER_TIMEOUT_S:g} s")
        except Exception as exc:  # noqa: BLE001 - aiortc's SDP parser raises many types
            await session.close("bad offer")
            self.metrics.sessions_total.labels("bad_sdp").inc()
            return _error(400, "bad_sdp", f"the offer's SDP was refused: {exc!r}"[:300])
        self.metrics.sessions_total.labels("accepted").inc()
        log.info("session started for task %s", task.id, extra={"session": sid})
        body_out = OfferResponse(sdp=answer.sdp, session=sid)
        return web.json_response(body_out.model_dump())

    # -- pages and information ------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        index = self._client / "index.html"
        if not index.is_file():
            return _error(404, "no_client", f"the client page is not installed ({index})")
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    async def _demo(self, request: web.Request) -> web.StreamResponse:
        if not self._demo_video.is_file():
            return _error(404, "no_demo", "the demo video is not installed")
        return web.FileResponse(self._demo_video)

    async def _tasks(self, request: web.Request) -> web.Response:
        tasks = [TaskInfo.of(t).model_dump() for t in self.library.values()]
        return web.json_response(
            {"protocol": PROTOCOL_VERSION, "default_task": self.default_task.id, "tasks": tasks}
        )

    async def _config(self, request: web.Request) -> web.Response:
        ice: list[dict[str, Any]] = [
            s.model_dump(exclude_none=True) for s in self.settings.serve.ice_servers
        ]
        return web.json_response(
            {
                "protocol": PROTOCOL_VERSION,
                "ice_servers": ice,
                "auth": self.settings.serve.token is not None,
                "demo_video": "/demo/video.mp4" if self._demo_video.is_file() else None,
                "capture": CAPTURE,
            }
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "version": __version__,
                "sessions": len(self.sessions),
                "engine": self.engine.name,
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
