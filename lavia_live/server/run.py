"""The entry points behind ``lavia serve``, ``lavia watch`` and ``lavia model-server``: open
the engine, run, and shut down cleanly on Ctrl-C or SIGTERM (every session and request
closed before the process exits)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import aiohttp

from lavia_live.config.settings import Settings
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import Engine, EngineError
from lavia_live.engines.factory import MANAGED_ENGINE, frame_max_side, open_engine
from lavia_live.engines.managed_server import open_managed_engine, served_models
from lavia_live.server.app import LiveServer
from lavia_live.server.tls import self_signed, server_context
from lavia_live.watch import check_source, print_event, stream_to_server, watch_source

log = logging.getLogger(__name__)

MODEL_LOOKUP_TIMEOUT_S = 3.0


async def _open_engine(settings: Settings) -> Engine:
    """The configured engine; a managed model server (``sglang``) is started and healthy.
    A URL without ``api_model`` gets the model its server lists, when it lists one."""
    e = settings.engine
    if e.name == MANAGED_ENGINE:
        return await open_managed_engine(e.launch, e.api_model, image_detail=e.image_detail)
    api_model = e.api_model
    if api_model is None and e.name.startswith(("http://", "https://")):
        api_model = await _only_model(e.name)
    return await asyncio.to_thread(
        open_engine,
        e.name,
        api_model=api_model,
        api_key_env=e.api_key_env,
        device=e.device,
        dtype=e.dtype,
        cpu_threads=e.cpu_threads,
        steps_only=e.steps_only,
        beams=e.beams,
        image_detail=e.image_detail,
        vision_cache=e.vision_cache,
        max_batch=e.max_batch,
        batch_window_s=e.batch_window_ms / 1000,
        prefix_cache=e.prefix_cache,
    )


async def _only_model(url: str) -> str | None:
    """The model a server at ``url`` serves, when ``GET /v1/models`` lists exactly one."""
    try:
        ids = await served_models(url, timeout_s=MODEL_LOOKUP_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("%s/models could not be read (%s): give the model with --api-model", url, exc)
        return None
    if len(ids) != 1:
        log.warning("%s serves %d models (%s): pick one with --api-model", url, len(ids), ids)
        return None
    return ids[0]


@contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _until_signal(
    start: Callable[[], Awaitable[None]], stop_server: Callable[[], Awaitable[None]], engine: Engine
) -> None:
    """``start`` a server, run until SIGINT or SIGTERM, then stop it and close ``engine``
    (also when starting fails)."""
    stop = asyncio.Event()
    try:
        with _stop_on_signals(stop):
            await start()
            await stop.wait()
    finally:
        await stop_server()
        await engine.aclose()


async def serve(settings: Settings) -> int:
    s = settings.serve
    library = TaskLibrary.load(settings.tasks.folder)
    library.require(settings.tasks.default_task)  # a wrong task fails before the model loads
    ssl_context = None
    if s.self_signed:
        cert, key = self_signed(s.host)
        ssl_context = server_context(cert, key)
    elif s.tls_cert is not None and s.tls_key is not None:
        ssl_context = server_context(s.tls_cert, s.tls_key)
    engine = await _open_engine(settings)
    try:
        server = LiveServer(
            settings, engine, frame_max_side=frame_max_side(settings.engine.name), library=library
        )
    except BaseException:  # e.g. no key for OpenAI TTS: a managed engine must not outlive us
        await engine.aclose()
        raise

    async def start() -> None:
        url = await server.start(s.host, s.port, ssl_context)
        print(f"LaViA Live is serving {engine.name} at {url}  (Ctrl-C stops)", flush=True)
        if ssl_context is None and s.host not in ("127.0.0.1", "localhost", "::1"):
            print(
                "note: browsers allow the camera only on https:// or localhost; for other "
                "machines use --self-signed or --tls-cert/--tls-key",
                file=sys.stderr,
            )
        if s.self_signed:
            print(
                "note: the certificate is self-signed: the browser shows a warning once "
                "(Advanced > Proceed); the camera works after that",
                file=sys.stderr,
            )

    await _until_signal(start, server.stop, engine)
    print("LaViA Live stopped", flush=True)
    return 0


async def model_server(settings: Settings) -> int:
    """Serve the engine's in-process model over the OpenAI protocol until a signal."""
    name = settings.engine.name
    if name == MANAGED_ENGINE or name.startswith(("http://", "https://", "openai:")):
        raise EngineError(
            f"lavia model-server serves an in-process model: --model is 'embedded' or a "
            f"model folder, not {name!r}"
        )
    from lavia_live.engines.local import LocalEngine  # torch: only for this command
    from lavia_live.server.model_server import ModelServer

    engine = await _open_engine(settings)
    assert isinstance(engine, LocalEngine)
    server = ModelServer(engine, settings.model_server)

    async def start() -> None:
        m = settings.model_server
        url = await server.start(m.host, m.port)
        print(
            f"LaViA model server: {server.model_id} ({engine.name}) listening on {url}  "
            "(Ctrl-C stops)",
            flush=True,
        )

    await _until_signal(start, server.stop, engine)
    print("LaViA model server stopped", flush=True)
    return 0


async def watch(
    source: str,
    settings: Settings,
    *,
    server: str | None = None,
    fast: bool = False,
    source_format: str | None = None,
) -> int:
    check_source(source, source_format)
    task = TaskLibrary.load(settings.tasks.folder).require(settings.tasks.default_task)
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        if server is not None:
            token = settings.serve.token
            await stream_to_server(
                server,
                source,
                task=task.id,
                on_event=print_event,
                token=token.get_secret_value() if token else None,
                settings=settings,
                stop=stop,
            )
            return 0
        engine = await _open_engine(settings)
        try:
            run = asyncio.create_task(
                watch_source(
                    source,
                    task=task,
                    engine=engine,
                    settings=settings,
                    frame_max_side=frame_max_side(settings.engine.name),
                    on_event=print_event,
                    fast=fast,
                    source_format=source_format,
                )
            )
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not run.done():
                run.cancel()
            await asyncio.wait({run})
            if not run.cancelled():
                run.result()  # a MediaError and the like surface here
        finally:
            await engine.aclose()
    return 0
