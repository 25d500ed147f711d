"""A model server lavia starts, watches and stops (``engine.name: sglang``), with
``lavia model-server --model embedded`` standing in for SGLang's launch_server (SGLang cannot
be installed here): real processes on 127.0.0.1, three model-server starts in all."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from PIL import Image

from lavia_live.cli import _serve_settings, build_parser
from lavia_live.config import Settings
from lavia_live.config.settings import LaunchSettings
from lavia_live.contract.guidance import parse_guidance
from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import GenerationOptions, complete
from lavia_live.engines.managed_server import ManagedEngine, ModelServerError, open_managed_engine
from lavia_live.engines.openai import OpenAIEngine
from lavia_live.models import EMBEDDED_FRAME_MAX_SIDE
from lavia_live.server.app import LiveServer
from lavia_live.server.run import _open_engine
from tests.lavia_live.server.conftest import wait_for
from tests.lavia_live.server.test_live import Client

pytestmark = pytest.mark.asyncio(loop_scope="module")

TASK = TaskLibrary.load().require("demo_oil_change")
STAND_IN = [
    sys.executable, "-m", "lavia_live.cli", "model-server",
    "--model", "{model}", "--host", "{host}", "--port", "{port}",
]  # fmt: skip


def stand_in(**changes: Any) -> LaunchSettings:
    values: dict[str, Any] = {
        "model": "embedded", "command": STAND_IN, "startup_timeout_s": 120.0,
        "restart_delay_s": 0.2, "stop_timeout_s": 10.0,
    }  # fmt: skip
    return LaunchSettings.model_validate(values | changes)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def restarting(client: Client) -> list[dict[str, Any]]:
    return [e for e in client.of("error") if e["code"] == "model_server_restarting"]


def jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (160, 120), (30 * i, 200 - 20 * i, 60)).save(out, "JPEG")
    return out.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def managed() -> AsyncIterator[ManagedEngine]:
    started = time.perf_counter()
    engine = await open_managed_engine(stand_in())
    print(f"start-up to healthy: {time.perf_counter() - started:.1f} s")
    yield engine
    await engine.aclose()


async def test_starts_healthy_and_answers_through_the_openai_engine(
    managed: ManagedEngine,
) -> None:
    assert managed.server.model_ids == ["embedded"]
    assert managed.server.pid is not None and alive(managed.server.pid)
    prompt = build_guidance_prompt(TASK, 4)
    answer = await complete(managed, prompt, [jpeg(i) for i in range(4)], GenerationOptions())
    assert parse_guidance(answer).current_step in TASK.steps, answer


async def test_a_url_engine_without_api_model_uses_the_one_model_served(
    managed: ManagedEngine,
) -> None:
    args = build_parser().parse_args(
        ["serve", "--engine-url", managed.server.url + "/v1", "--api-key-env", ""]
    )
    attached = await _open_engine(_serve_settings(args))
    try:
        assert isinstance(attached, OpenAIEngine) and attached.options.model == "embedded"
    finally:
        await attached.aclose()
    with pytest.raises(SystemExit):  # one engine or the other
        build_parser().parse_args(["serve", "--engine", "embedded", "--engine-url", "http://h/v1"])


async def test_a_killed_server_is_restarted_and_sessions_are_told(
    managed: ManagedEngine, demo_video: tuple[Path, dict[str, Any]]
) -> None:
    settings = Settings.model_validate(
        {"speech": {"enabled": False}, "listening": {"enabled": False}}
    )
    server = LiveServer(settings, managed, frame_max_side=EMBEDDED_FRAME_MAX_SIDE)
    await server.start("127.0.0.1", 0)
    client = Client(server, demo_video[0])
    try:
        await client.connect()
        await wait_for(lambda: client.of("guidance"), 60, "guidance before the kill")
        old = managed.server.pid
        assert old is not None
        killed = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        # (a request in flight when it died may fail first, as an engine_error)
        await wait_for(lambda: restarting(client), 10, "the restart told")
        [error] = restarting(client)
        assert "killed by SIGKILL" in error["message"], error
        await wait_for(lambda: managed.server.restarts == 1, 60, "restarted")
        print(f"killed to healthy again: {time.perf_counter() - killed:.1f} s")
        assert managed.server.pid not in (None, old) and not alive(old)
        seen = len(client.events)
        await wait_for(
            lambda: any(e["type"] == "guidance" for e in client.events[seen:]),
            60,
            "guidance after the restart",
        )
        print(f"killed to guidance again: {time.perf_counter() - killed:.1f} s")
    finally:
        await client.close()
        await server.stop()


async def test_a_server_that_exits_at_once_is_a_clear_error() -> None:
    fails = [sys.executable, "-c", "import sys; print('no CUDA GPU found'); sys.exit(3)"]
    with pytest.raises(ModelServerError) as info:
        await open_managed_engine(stand_in(command=fails))
    message = str(info.value)
    assert "exited with code 3 while starting" in message
    assert "no CUDA GPU found" in message


# A stand-in that starts in a blink: healthy, then exits after LIFE seconds (0: never);
# with IGNORE_TERM it ignores SIGTERM (no braces: the command is a format template).
TINY_SERVER = """
import http.server, json, signal, sys, threading, os
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(data=[dict(id="tiny")])).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("tiny server up", flush=True)
life = float(os.environ.get("LIFE", "0"))
if life:
    threading.Timer(life, lambda: os._exit(7)).start()
server.serve_forever()
"""


async def test_restarts_back_off_then_stop_and_sessions_hear_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIFE", "1.2")  # healthy at the second poll (0.5 s), then gone
    told: list[tuple[str, str]] = []
    engine = ManagedEngine(
        stand_in(command=[sys.executable, "-c", TINY_SERVER, "{port}"], max_restarts=2,
                 restart_delay_s=0.05)
    )  # fmt: skip
    engine.server.on_status = lambda code, message: told.append((code, message))
    await engine.server.start()
    try:
        await wait_for(lambda: len(told) == 3, 30, "two restarts, then given up")
        assert [code for code, _ in told] == ["model_server_restarting"] * 2 + [
            "model_server_failed"
        ]
        assert "exited with code 7" in told[0][1] and "after 2 tries" in told[2][1]
        assert engine.server.restarts == 2
        with pytest.raises(ModelServerError, match="not restarted after 2 tries"):
            await engine.server.wait_ready(1.0)
    finally:
        await engine.aclose()


async def test_a_server_that_ignores_sigterm_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGNORE_TERM", "1")
    command = [sys.executable, "-c", TINY_SERVER, "{port}"]
    engine = await open_managed_engine(stand_in(command=command, stop_timeout_s=0.5))
    pid = engine.server.pid
    assert pid is not None and engine.server.model_ids == ["tiny"]
    started = time.perf_counter()
    await engine.aclose()
    assert not alive(pid) and 0.5 <= time.perf_counter() - started < 5


async def test_closing_the_engine_stops_the_server(managed: ManagedEngine) -> None:
    pid = managed.server.pid
    assert pid is not None and alive(pid)
    await managed.aclose()
    assert not alive(pid)
    assert managed.server.pid is None


async def test_a_killed_lavia_serve_takes_its_model_server_along(tmp_path: Path) -> None:
    config = tmp_path / "stand_in.yaml"
    config.write_text(yaml.safe_dump({"engine": {"launch": {"command": STAND_IN}}}))
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lavia_live.cli", "serve", "--engine", "sglang",
        "--model", "embedded", "--port", "0", "-c", str(config),
        "--set", "speech.enabled=false", "--set", "listening.enabled=false",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert serve.stdout is not None
    child = None
    try:
        line = (await asyncio.wait_for(serve.stdout.readline(), 120)).decode()
        assert re.search(r"serving sglang:embedded at http://127\.0\.0\.1:\d+", line), line
        [child] = children(serve.pid)
        assert alive(child)
        serve.kill()
        await serve.wait()
        killed = time.perf_counter()
        await wait_for(lambda: not alive(child), 10, "the model server gone with lavia serve")
        print(f"model server gone {time.perf_counter() - killed:.2f} s after lavia serve")
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


async def test_a_hung_server_is_restarted() -> None:
    """A server that is alive but answers nothing (here: stopped with SIGSTOP) fails its
    health checks and is killed and started again."""
    told: list[tuple[str, str]] = []
    engine = ManagedEngine(
        stand_in(command=[sys.executable, "-c", TINY_SERVER, "{port}"], health_interval_s=0.2,
                 health_timeout_s=0.5, unhealthy_after=2, stop_timeout_s=0.5)
    )  # fmt: skip
    engine.server.on_status = lambda code, message: told.append((code, message))
    await engine.server.start()
    try:
        hung = engine.server.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        await wait_for(lambda: engine.server.restarts == 1, 30, "restarted")
        [(code, message)] = told
        assert code == "model_server_restarting"
        assert "stopped answering (GET /health failed 2 times in a row" in message, message
        assert engine.server.pid not in (None, hung) and not alive(hung)
        assert await engine.server._healthy()  # the new one answers
    finally:
        await engine.aclose()
