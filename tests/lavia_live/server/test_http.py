"""The HTTP side: the page and its information routes, health, metrics, TLS, and the
``lavia serve`` process itself (zero-flag defaults, a clean stop on SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lavia_live.config import Settings
from lavia_live.errors import ConfigError
from lavia_live.server.app import LiveServer
from lavia_live.server.protocol import PROTOCOL_VERSION
from lavia_live.server.tls import self_signed, server_context
from tests.lavia_live.server.conftest import running_server, wait_for
from tests.lavia_live.server.test_live import Client

ROOT = Path(__file__).resolve().parents[3]


async def get(url: str, **kwargs: Any) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as response:
        body = await response.read()
        return response.status, response.headers.get("Content-Type", ""), body.decode("latin-1")


async def test_page_information_health_and_metrics(
    live_server: LiveServer, demo_video: tuple[Path, dict[str, Any]]
) -> None:
    status, kind, page = await get(live_server.url + "/")
    assert status == 200 and kind.startswith("text/html") and "<html" in page.lower()
    status, _, tasks = await get(live_server.url + "/api/tasks")
    listing = json.loads(tasks)
    assert listing["protocol"] == PROTOCOL_VERSION and listing["default_task"] == "demo_oil_change"
    demo = next(t for t in listing["tasks"] if t["id"] == "demo_oil_change")
    assert len(demo["steps"]) == 7
    config = json.loads((await get(live_server.url + "/api/config"))[2])
    assert config["ice_servers"] == [] and config["auth"] is False
    assert config["demo_video"] == "/demo/video.mp4"
    status, kind, _ = await get(live_server.url + "/demo/video.mp4")
    assert status == 200 and kind == "video/mp4"

    client = Client(live_server, demo_video[0])
    try:
        await client.connect()
        session = live_server.sessions[client.sid]
        await wait_for(lambda: session.assistant.frames_sampled >= 5, 30, "frames sampled")
        health = json.loads((await get(live_server.url + "/healthz"))[2])
        assert health == {**health, "status": "ok", "sessions": 1, "engine": "local:embedded"}
        status, kind, metrics = await get(live_server.url + "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        values = dict(
            line.rsplit(" ", 1) for line in metrics.splitlines() if line and line[0] != "#"
        )
        assert float(values["lavia_sessions_active"]) == 1
        assert float(values["lavia_frames_sampled_total"]) >= 5
        assert float(values["lavia_frames_received_total"]) >= float(
            values["lavia_frames_sampled_total"]
        )
        assert float(values['lavia_sessions_started_total{outcome="accepted"}']) == 1
        assert "lavia_engine_latency_seconds_bucket" in metrics
    finally:
        await client.close()
    await wait_for(lambda: not live_server.sessions, 20, "session closed")


async def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed("127.0.0.1", tmp_path)
    assert self_signed("127.0.0.1", tmp_path) == (cert, key)  # made once, then reused
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    async with running_server(Settings()) as server:
        await server.stop()  # restart the same server with TLS on another port
        url = await server.start("127.0.0.1", 0, server_context(cert, key))
        assert url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(cert))
        status, _, body = await get(url + "/healthz", ssl=trusting)
        assert status == 200 and '"ok"' in body
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(url + "/healthz")  # an untrusting client refuses it
    with pytest.raises(ConfigError, match="no such file"):
        server_context(tmp_path / "missing.crt", key)
    with pytest.raises(ConfigError, match="not a matching certificate"):
        server_context(key, key)


async def test_lavia_serve_starts_with_no_flags_and_stops_cleanly_on_sigterm(
    demo_video: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    env = {**os.environ, "LAVIA_SERVE__PORT": "0", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lavia_live.cli", "serve",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "serving local:embedded at http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split()[0]
        status, _, _ = await get(url + "/healthz")
        assert status == 200

        class Remote:
            pass

        remote = Remote()
        remote.url = url  # type: ignore[attr-defined]
        client = Client(remote, demo_video[0])  # type: ignore[arg-type]
        try:
            await client.connect()
            proc.send_signal(signal.SIGTERM)
            await wait_for(
                lambda: (
                    client.pc.connectionState == "closed" or client.pc.connectionState == "failed"
                ),
                30,
                "peer closed by the server",
            )
        finally:
            await client.close()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = (await proc.stdout.read()).decode()
        assert "LaViA Live stopped" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
