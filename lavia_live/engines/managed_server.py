"""A model server that ``lavia`` starts, watches and stops: SGLang by default.

:class:`ManagedServer` runs ``engine.launch.command`` (:class:`~lavia_live.config.settings.
LaunchSettings`: placeholders filled, ``args`` appended) on a free port of 127.0.0.1 in a
process group of its own, relays its output to the ``lavia_live.model_server`` logger (INFO)
and waits until ``GET /health`` and ``GET /v1/models`` answer. A process that dies, or stops
answering its health check ``unhealthy_after`` times in a row (checked every
``health_interval_s``: a hung server), is started again after a doubling delay, at most
``max_restarts`` times in a row (``on_status`` hears of it); :meth:`~ManagedServer.stop`
sends SIGTERM to the group, SIGKILL after a grace period.
If ``lavia`` itself is killed, nothing runs that: on Linux the server is started with
``PR_SET_PDEATHSIG`` = SIGKILL, so the kernel kills it with its parent (SGLang arms the same
for its worker processes); other systems have no such call, and there a server outlives a
killed ``lavia`` (its process group id is logged at start). :class:`ManagedEngine` is the
OpenAI-compatible engine at the server's current URL; a request made while it restarts
waits for it (at most the engine's timeout).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp

from lavia_live.config.settings import LaunchSettings
from lavia_live.contract.prompt import Prompt
from lavia_live.engines.base import EngineError, GenerationOptions
from lavia_live.engines.openai import OpenAIEngine, OpenAIEngineOptions

log = logging.getLogger(__name__)
output_log = logging.getLogger("lavia_live.model_server")  # the server's own lines

HOST = "127.0.0.1"  # a managed server serves this lavia only
HEALTH_POLL_S = 0.5
HTTP_TIMEOUT_S = 5.0
LOG_LINES_KEPT = 30  # the last output lines quoted when the server fails
PR_SET_PDEATHSIG = 1

StatusListener = Callable[[str, str], None]  # (code, message)


class ModelServerError(EngineError):
    """The managed model server did not start, or is down (restarting, or for good)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "engine_unavailable")


def launch_command(launch: LaunchSettings, port: int) -> list[str]:
    """``launch.command`` with its placeholders filled, then ``launch.args``."""
    if not launch.model:
        raise ModelServerError(
            "engine sglang needs a model: --model PATH (engine.launch.model), e.g. the final/ "
            "folder lavia train wrote"
        )
    model = launch.model
    if Path(model).expanduser().exists():  # a folder; else a hub id, passed as it is
        model = str(Path(model).expanduser().resolve())
    values = {
        "python": os.path.expanduser(launch.python),
        "model": model,
        "host": HOST,
        "port": str(port),
        "tp": str(launch.tp),
    }
    return [part.format(**values) for part in launch.command] + list(launch.args)


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def served_models(base_url: str, timeout_s: float = HTTP_TIMEOUT_S) -> list[str]:
    """The model ids ``GET {base_url}/models`` lists (``base_url`` ends in ``/v1``)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(base_url.rstrip("/") + "/models") as response,
    ):
        response.raise_for_status()
        body = await response.json(content_type=None)
    return [str(m["id"]) for m in body.get("data", []) if isinstance(m, dict) and "id" in m]


def exit_description(code: int) -> str:
    if code < 0 and -code in signal.valid_signals():
        return f"was killed by {signal.Signals(-code).name} (exit code {code})"
    return f"exited with code {code}"


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when its parent dies (Linux);
    None elsewhere. ``prctl`` is looked up here, so the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return arm


class ManagedServer:
    """One model-server process at a time, kept alive until :meth:`stop`."""

    def __init__(self, launch: LaunchSettings, on_status: StatusListener | None = None) -> None:
        self.launch = launch
        self.on_status = on_status
        self.url = ""  # http://127.0.0.1:PORT, while a process runs
        self.model_ids: list[str] = []
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._failure: str | None = None  # set when it will not be restarted again
        self._stopping = False
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server and wait until it is healthy; :class:`ModelServerError` (with
        its last output lines) when it exits or is not healthy in ``startup_timeout_s``."""
        await self._launch()
        self._supervisor = asyncio.create_task(self._supervise(), name="lavia-model-server")

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once the server is healthy; :class:`ModelServerError` if it is down for
        good or not back within ``timeout_s``."""
        if self._failure is not None:
            raise ModelServerError(self._failure)
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            raise ModelServerError(
                self._failure or f"the model server is restarting: not back within {timeout_s:g} s"
            ) from None

    async def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``stop_timeout_s``."""
        self._stopping = True
        self._ready.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._end_process()

    # -- one process ------------------------------------------------------------------

    async def _launch(self) -> None:
        port = free_port()
        command = launch_command(self.launch, port)
        self._lines.clear()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
                preexec_fn=_die_with_parent(),
                limit=1 << 20,
            )
        except OSError as exc:
            raise ModelServerError(f"cannot start the model server {command[0]!r}: {exc}") from exc
        self.url = f"http://{HOST}:{port}"
        log.info("model server started (pid and process group %d): %s", self.pid, command)
        self._relay = asyncio.create_task(self._relay_output(self._process))
        started = time.monotonic()
        try:
            await self._wait_healthy(self._process)
        except BaseException:
            await self._end_process()
            raise
        log.info(
            "model server healthy at %s in %.1f s, serving %s",
            self.url, time.monotonic() - started, self.model_ids,
        )  # fmt: skip
        self._ready.set()

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> None:
        exited = asyncio.ensure_future(process.wait())
        timeout = self.launch.startup_timeout_s
        try:
            async with asyncio.timeout(timeout):
                while not await self._healthy():
                    await asyncio.wait({exited}, timeout=HEALTH_POLL_S)
                    if exited.done():
                        assert self._relay is not None
                        await asyncio.wait({self._relay}, timeout=HTTP_TIMEOUT_S)
                        raise ModelServerError(
                            f"the model server {exit_description(exited.result())} while "
                            f"starting{self._last_lines()}"
                        )
        except TimeoutError:
            raise ModelServerError(
                f"the model server was not healthy within {timeout:g} s "
                f"(engine.launch.startup_timeout_s){self._last_lines()}"
            ) from None
        finally:
            exited.cancel()

    async def _healthy(self, timeout_s: float = HTTP_TIMEOUT_S) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(self.url + "/health") as response,
            ):
                if response.status != 200:
                    return False
            self.model_ids = await served_models(self.url + "/v1", timeout_s)
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, AttributeError):
            return False  # no answer, or not one an OpenAI-compatible server gives
        return bool(self.model_ids)

    async def _relay_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        extra = {"pid": process.pid}
        while True:
            try:
                raw = await process.stdout.readline()
            except ValueError:  # a line over the reader's limit: dropped, reading goes on
                output_log.info("(an over-long output line was dropped)", extra=extra)
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self._lines.append(line)
            output_log.info("%s", line, extra=extra)

    def _last_lines(self) -> str:
        if not self._lines:
            return " (it wrote nothing)"
        return "; its last output lines:\n  " + "\n  ".join(self._lines)

    async def _end_process(self) -> None:
        process = self._process  # forgotten only once it is gone: a stop() that cancels this
        if process is not None:  # midway finds it still here and ends it
            await self._kill(process)
            self._process = None
        if self._relay is not None:
            # the rest of its output, unless something it started still holds the pipe
            await asyncio.wait({self._relay}, timeout=HTTP_TIMEOUT_S)
            self._relay.cancel()
            await asyncio.gather(self._relay, return_exceptions=True)
            self._relay = None

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to its group, SIGKILL after ``stop_timeout_s``; then its leftovers."""
        if process.returncode is None:
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.launch.stop_timeout_s):
                    await process.wait()
            except TimeoutError:
                log.warning(
                    "model server (pid %d) still running %g s after SIGTERM: SIGKILL",
                    process.pid, self.launch.stop_timeout_s,
                )  # fmt: skip
                self._signal_group(process.pid, signal.SIGKILL)
                async with asyncio.timeout(self.launch.stop_timeout_s):
                    await process.wait()
        self._signal_group(process.pid, signal.SIGKILL)  # workers it left behind

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    # -- restarts ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Wait for the process to die; start it again with a growing delay."""
        failures = 0
        healthy_since = time.monotonic()
        limit = self.launch.restart_delay_max_s
        while True:
            process = self._process
            assert process is not None
            why = await self._until_down(process)
            self._ready.clear()
            if time.monotonic() - healthy_since >= limit:  # it ran well: count from 1 again
                failures = 0
            failures += 1
            if failures > self.launch.max_restarts:
                self._give_up(f"{why}; not restarted after {self.launch.max_restarts} tries")
                await self._end_process()  # a hung one holds its GPU memory otherwise
                return
            delay = min(self.launch.restart_delay_s * 2 ** (failures - 1), limit)
            log.warning("%s%s; restarting it in %g s", why, self._last_lines(), delay)
            message = f"{why}; restarting it (guidance resumes when it is back)"
            self._notify("model_server_restarting", message)
            await self._end_process()
            while True:
                await asyncio.sleep(delay)
                if self._stopping:  # stop() cancels this task: never start after it
                    return
                try:
                    await self._launch()
                    break
                except ModelServerError as exc:
                    failures += 1
                    if failures > self.launch.max_restarts:
                        self._give_up(
                            f"{exc}; not restarted after {self.launch.max_restarts} tries"
                        )
                        return
                    delay = min(delay * 2, limit)
                    log.warning("%s; trying again in %g s", exc, delay)
            self.restarts += 1
            healthy_since = time.monotonic()

    async def _until_down(self, process: asyncio.subprocess.Process) -> str:
        """Wait until the process exits or stops answering its health check; what
        happened, in words."""
        launch = self.launch
        exited = asyncio.ensure_future(process.wait())
        misses = 0
        try:
            while True:
                await asyncio.wait({exited}, timeout=launch.health_interval_s or None)
                if exited.done():
                    return f"the model server {exit_description(exited.result())}"
                if await self._healthy(launch.health_timeout_s):
                    misses = 0
                    continue
                misses += 1
                log.warning("model server health check failed (%d in a row)", misses)
                if misses >= launch.unhealthy_after:
                    return (
                        f"the model server stopped answering (GET /health failed {misses} "
                        f"times in a row, {launch.health_timeout_s:g} s each)"
                    )
        finally:
            exited.cancel()

    def _give_up(self, message: str) -> None:
        self._failure = message
        log.error("%s", message)
        self._notify("model_server_failed", message)

    def _notify(self, code: str, message: str) -> None:
        if self.on_status is not None:
            self.on_status(code, message)


class ManagedEngine:
    """The OpenAI-compatible engine at a :class:`ManagedServer`'s current URL."""

    def __init__(
        self,
        launch: LaunchSettings,
        api_model: str | None = None,
        *,
        image_detail: str | None = "low",
        timeout_s: float = 30.0,
    ) -> None:
        self.server = ManagedServer(launch)
        self.name = f"sglang:{launch.model}"
        self._options = OpenAIEngineOptions(
            api_key_env="", image_detail=image_detail, timeout_s=timeout_s
        )
        self.max_concurrency = self._options.max_concurrency
        self._api_model = api_model
        self._engine: OpenAIEngine | None = None
        self._engines: list[OpenAIEngine] = []  # closed with this one

    def _current(self) -> OpenAIEngine:
        base_url = self.server.url + "/v1"
        if self._engine is None or self._engine.options.base_url != base_url:
            model = self._api_model or (self.server.model_ids or ["default"])[0]
            options = dataclasses.replace(self._options, model=model, base_url=base_url)
            self._engine = OpenAIEngine(options)
            self._engines.append(self._engine)
        return self._engine

    async def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        await self.server.wait_ready(self._options.timeout_s)
        async for piece in self._current().stream(prompt, frames_jpeg, options):
            yield piece

    async def aclose(self) -> None:
        for engine in self._engines:
            await engine.aclose()
        self._engines.clear()
        await self.server.stop()


async def open_managed_engine(
    launch: LaunchSettings, api_model: str | None = None, *, image_detail: str | None = "low"
) -> ManagedEngine:
    """Start the configured model server (stopped again when that fails or is cancelled)
    and return the engine in front of it."""
    engine = ManagedEngine(launch, api_model, image_detail=image_detail)
    try:
        await engine.server.start()
    except BaseException:
        await engine.server.stop()
        raise
    return engine
