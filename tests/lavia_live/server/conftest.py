"""A real ``lavia serve`` on 127.0.0.1 with the embedded model, real aiortc peers over
loopback, and a rendered demo video with its ground truth."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import pytest

from lavia_live.config import Settings
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.factory import frame_max_side, open_engine
from lavia_live.server.app import LiveServer
from training.demo.render import DemoSpec, render_demo_video


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # an mDNS name (*.local) or other host name


@pytest.fixture(autouse=True)
def loopback_only_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ICE agent in the test offers 127.0.0.1 only and ignores other remote candidates
    (aioice never offers loopback by itself; this machine's other addresses are off limits)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    add = aioice.ice.Connection.add_remote_candidate

    async def add_loopback(self: aioice.ice.Connection, candidate: Any) -> None:
        if candidate is None or _loopback(candidate.host):
            await add(self, candidate)

    monkeypatch.setattr(aioice.ice.Connection, "add_remote_candidate", add_loopback)


def make_settings(**serve: Any) -> Settings:
    return Settings.model_validate({"serve": serve})


@pytest.fixture
async def live_server() -> AsyncIterator[LiveServer]:
    """A server on a free port running the embedded model; stopped after the test."""
    async with running_server(make_settings()) as server:
        yield server


class running_server:
    """``async with running_server(settings) as server``: a started LiveServer (the embedded
    engine, or the engine ``spec`` names), stopped and its engine closed on exit."""

    def __init__(self, settings: Settings, spec: str = "embedded", **engine: Any) -> None:
        self.settings = settings
        self.spec = spec
        self.engine = engine  # open_engine's keywords
        self.server: LiveServer | None = None

    async def __aenter__(self) -> LiveServer:
        options = self.engine or {"cpu_threads": 1}
        engine = await asyncio.to_thread(open_engine, self.spec, **options)
        self.server = LiveServer(self.settings, engine, frame_max_side=frame_max_side(self.spec))
        await self.server.start("127.0.0.1", 0)
        return self.server

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.stop()
        await self.server.engine.aclose()


async def wait_for(condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
    """Wait until ``condition()`` is true, checking on every event-loop turn of 50 ms."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
    assert condition(), what


@pytest.fixture(scope="session")
def demo_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A short demo video (steps of 3-4 s, no mistake) and its ground truth."""
    task = TaskLibrary.load().require("demo_oil_change")
    out = tmp_path_factory.mktemp("demo-video")
    spec = DemoSpec(fps=5, min_step_s=4.0, max_step_s=5.0, mistake_rate=0.0, narration=False)
    render_demo_video(task, 4242, out, spec)
    truth = json.loads((out / "demo_04242.truth.json").read_text())
    return out / "demo_04242.mp4", truth


class NothingLeft:
    """Made before a test starts its servers: :meth:`check`, after they stopped, waits until
    every task and thread they started is gone (asyncio's own executor threads aside)."""

    def __init__(self) -> None:
        self.threads = {t.ident for t in threading.enumerate()}
        self.tasks = len(asyncio.all_tasks())

    async def check(self, timeout: float = 20.0) -> None:
        await wait_for(lambda: len(asyncio.all_tasks()) <= self.tasks, timeout, "no task left")
        pool = {t.ident for t in threading.enumerate() if t.name.startswith("asyncio_")}
        await wait_for(
            lambda: {t.ident for t in threading.enumerate()} <= self.threads | pool,
            timeout,
            "no thread left",
        )


def thread_names() -> Iterator[str]:
    return (t.name for t in threading.enumerate())
