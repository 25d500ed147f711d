"""A benchmark client process: ``--peers`` aiortc peers that each stream a cached VP8 stream
to a running ``lavia serve`` over loopback and record what happened, as JSON in ``--out``.

    python benchmarks/_peer.py --url URL --stream FILE.vp8s --peers 4 --seconds 15 --out OUT

Each peer offers video (VP8 only) and the ``lavia`` data channel, waits for the server's
``hello`` (so the server's receiver is up before the first frame, which is the only
keyframe of a pass), then sends the stream's frames as they are, paced by the wall clock at
the stream's rate, looping until ``--seconds`` of video are sent (or once through without
it). Frames are not encoded here: the client's CPU is packetising and SRTP only, and the
server sees the same stream on every run. Per peer the output holds the session id, the
wall time (``time.time()``, the same clock as the server's on this machine) at which each
frame was handed to the sender, and every event with the wall time it arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
from _loopback import use_loopback_only_ice
from _media import Vp8Stream
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger("bench-peer")

HTTP_TIMEOUT_S = 30.0
HELLO_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0


class PacketTrack(MediaStreamTrack):
    """Sends a :class:`Vp8Stream`'s frames at its rate, from when ``start`` is set."""

    kind = "video"

    def __init__(self, stream: Vp8Stream, count: int, start: asyncio.Event) -> None:
        super().__init__()
        self.stream = stream
        self.count = count
        self.start = start
        self.sent: list[float] = []  # wall time each frame was handed to the sender
        self.done = asyncio.Event()
        self._t0: float | None = None

    async def recv(self) -> Any:
        if self._t0 is None:
            try:
                await asyncio.wait_for(self.start.wait(), HELLO_TIMEOUT_S)
            except TimeoutError:
                self._finish()
                raise MediaStreamError from None
            self._t0 = time.monotonic()
        index = len(self.sent)
        if index >= self.count or self.readyState != "live":
            self._finish()
            raise MediaStreamError
        delay = self._t0 + index / self.stream.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = self.stream.packet(index)
        self.sent.append(time.time())
        return packet

    def _finish(self) -> None:
        self.done.set()
        self.stop()


async def run_peer(
    url: str, stream: Vp8Stream, count: int, task: str, linger_s: float
) -> dict[str, Any]:
    events: list[tuple[float, dict[str, Any]]] = []
    hello = asyncio.Event()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = PacketTrack(stream, count, hello)
    result: dict[str, Any] = {"sid": None, "fps": stream.fps, "error": None}
    try:
        channel = pc.createDataChannel("lavia")

        @channel.on("message")
        def _message(data: str | bytes) -> None:
            event = json.loads(data)
            events.append((time.time(), event))
            if event.get("type") == "hello":
                hello.set()

        transceiver = pc.addTransceiver(track, direction="sendonly")
        capabilities = RTCRtpSender.getCapabilities("video")
        transceiver.setCodecPreferences(
            [c for c in capabilities.codecs if c.mimeType in ("video/VP8", "video/rtx")]
        )
        await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), HTTP_TIMEOUT_S)
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "task": task}
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(f"{url}/offer", json=body) as response,
        ):
            answer = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"offer refused: {response.status} {answer}")
        result["sid"] = answer["session"]
        await asyncio.wait_for(
            pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer")),
            HTTP_TIMEOUT_S,
        )
        budget = HELLO_TIMEOUT_S + count / stream.fps + 30.0
        await asyncio.wait_for(track.done.wait(), budget)
        await asyncio.sleep(linger_s)  # the last frames reach the server, answers come back
    except (aiohttp.ClientError, TimeoutError, RuntimeError, KeyError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("peer failed: %s", result["error"])
    finally:
        track.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT_S)
    result["sent"] = track.sent
    result["events"] = events
    return result


async def main_async(args: argparse.Namespace) -> None:
    use_loopback_only_ice()
    stream = Vp8Stream.load(Path(args.stream))
    count = round(args.seconds * stream.fps) if args.seconds else len(stream)

    async def staggered(i: int) -> dict[str, Any]:
        await asyncio.sleep(i * args.stagger)
        return await run_peer(args.url.rstrip("/"), stream, count, args.task, args.linger)

    results = await asyncio.gather(*(staggered(i) for i in range(args.peers)))
    Path(args.out).write_text(json.dumps({"peers": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True, help="a cached .vp8s stream")
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.0, help="0: the stream once")
    parser.add_argument("--task", default="demo_oil_change")
    parser.add_argument("--linger", type=float, default=2.0, help="seconds after the last frame")
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between peers")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="peer %(levelname)s %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
