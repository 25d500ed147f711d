"""``lavia watch SOURCE``: the live loop on a recording or a camera, events as JSON lines.

Without ``--server`` the video runs through the same :class:`LiveAssistant` a live session
uses (sampler, clip buffer, scheduler, engine, step tracker) at real-time pace, so what it
prints is what the live assistant would have said; ``--fast`` does not wait for the clock
and lets every clip's request finish before the next frame (same timeline, every clip
answered). With ``--server URL`` it is a headless WebRTC client of a running ``lavia
serve``: it streams the file and prints the events the server sends.

Each line is an event of :mod:`lavia_live.server.protocol` plus ``"t"``: the video time
(seconds from the first frame) at which it was emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from lavia_live.config.settings import Settings
from lavia_live.contract.tasks import TaskContext
from lavia_live.engines.base import Engine
from lavia_live.errors import LaviaError, MediaError
from lavia_live.server.assistant import LiveAssistant, LoopOptions
from lavia_live.server.protocol import CHANNEL_LABEL, ServerEvent
from lavia_live.server.scheduler import Scheduler
from lavia_live.server.session import ice_configuration

log = logging.getLogger(__name__)

OnEvent = Callable[[dict[str, Any]], None]
HTTP_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 20.0


class WatchError(LaviaError):
    """The source cannot be watched, or the server refused or dropped the stream."""


async def _frames(source: str, fmt: str | None) -> AsyncIterator[av.VideoFrame]:
    """Decoded frames of ``source``, decoded in a worker thread."""
    try:
        container = await asyncio.to_thread(av.open, source, format=fmt)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{source}: cannot open: {exc}") from exc
    try:
        if not container.streams.video:
            raise MediaError(f"{source}: no video stream")
        frames = container.decode(video=0)
        while True:
            try:
                frame = await asyncio.to_thread(next, frames, None)
            except av.FFmpegError as exc:
                raise MediaError(f"{source}: decoding failed: {exc}") from exc
            if frame is None:
                return
            yield frame
    finally:
        container.close()


async def watch_source(
    source: str,
    *,
    task: TaskContext,
    engine: Engine,
    settings: Settings,
    frame_max_side: int,
    on_event: OnEvent,
    fast: bool = False,
    source_format: str | None = None,
    realtime: bool = True,
) -> None:
    """Run ``source`` through the live loop; every event goes to ``on_event``."""
    clock = {"t": 0.0}

    def emit(event: ServerEvent) -> None:
        on_event({"t": round(clock["t"], 3), **event.model_dump()})

    scheduler = Scheduler(settings.engine.concurrency or engine.max_concurrency)
    scheduler.start()
    assistant = LiveAssistant(
        "watch",
        task,
        settings=settings,
        options=LoopOptions.of(settings, frame_max_side),
        engine=engine,
        scheduler=scheduler,
        executor=None,
        emit=emit,
    )
    started: float | None = None
    first: float | None = None
    last_request: asyncio.Future[bool] | None = None
    try:
        async for frame in _frames(source, source_format):
            t = float(frame.time) if frame.time is not None else clock["t"]
            first = t if first is None else first
            clock["t"] = t - first
            if realtime and not fast:
                started = time.monotonic() if started is None else started
                delay = started + clock["t"] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing to the video's clock
            request = await assistant.offer_frame(frame)
            if request is not None:
                last_request = request
                if fast:
                    await request
        if last_request is not None:
            await last_request  # the last clip's answer
    finally:
        await scheduler.aclose()


async def stream_to_server(
    url: str,
    source: str,
    *,
    task: str | None,
    on_event: OnEvent,
    token: str | None = None,
    settings: Settings | None = None,
    linger_s: float = 3.0,
    loop_video: bool = False,
    stop: asyncio.Event | None = None,
) -> str:
    """Stream ``source`` to a running ``lavia serve`` at ``url``; returns the session id.

    Ends ``linger_s`` after the video ends (the last answers arrive), when ``stop`` is set,
    or when the connection fails.
    """
    settings = settings or Settings()
    try:
        player = MediaPlayer(source, loop=loop_video)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{source}: cannot open: {exc}") from exc
    if player.video is None:
        raise MediaError(f"{source}: no video stream")
    pc = RTCPeerConnection(ice_configuration(settings.serve))
    started = time.monotonic()
    finished = stop or asyncio.Event()
    channel = pc.createDataChannel(CHANNEL_LABEL)

    @channel.on("message")
    def _message(data: str | bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("the server sent a message that is not JSON: %r", data[:100])
            return
        on_event({"t": round(time.monotonic() - started, 3), **event})

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState in ("failed", "closed"):
            finished.set()

    video_ended = asyncio.Event()
    player.video.on("ended", video_ended.set)
    try:
        pc.addTrack(player.video)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):  # ICE gathering
            await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "task": task}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(f"{url.rstrip('/')}/offer", json=body, headers=headers) as response,
        ):
            answer = await response.json(content_type=None)
            if response.status != 200:
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                raise WatchError(
                    f"{url}: offer refused ({response.status} {error.get('code', '')}): "
                    f"{error.get('message', answer)}"
                )
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        waits = [asyncio.create_task(finished.wait()), asyncio.create_task(video_ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if video_ended.is_set() and not finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), linger_s)
        return str(answer["session"])
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WatchError(f"{url}: {exc or 'timed out'}") from exc
    finally:
        if player.video is not None:
            player.video.stop()
        await pc.close()


def print_event(event: dict[str, Any]) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)


def check_source(source: str, source_format: str | None) -> None:
    """A file source must exist (a device name with a format is passed to FFmpeg as is)."""
    if source_format is None and not Path(source).exists() and "://" not in source:
        raise MediaError(f"{source}: no such file")
