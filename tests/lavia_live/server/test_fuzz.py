"""Thousands of malformed offers and data-channel messages at a running server: each gets a
clear refusal, nothing crashes, and a real session works afterwards."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import aiohttp

from lavia_live.server.app import LiveServer
from tests.lavia_live.server.conftest import wait_for
from tests.lavia_live.server.test_live import Client

N_OFFERS = 5000
N_MESSAGES = 5000
SDP_LINES = [
    "v=0",
    "o=- 1 1 IN IP4 0.0.0.0",
    "s=-",
    "t=0 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "a=rtpmap:96 VP8/90000",
    "a=setup:actpass",
    "a=ice-ufrag:x",
    "a=ice-pwd:y",
    "a=fingerprint:sha-256 00:11",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 0.0.0.0",
    "a=mid:0",
    "a=sendonly",
    "a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
]


def garbage_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randint(-(2**70), 2**70)
    if kind == 1:
        return rng.random() * 1e308
    if kind == 2:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(40)))
    if kind == 3:
        return rng.choice([None, True, False, "", "offer", "question", "task", "reset"])
    if kind == 4:
        return "x" * rng.choice([0, 1, 4095, 4097, 70000])
    if kind == 5:
        return [garbage_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["sdp", "type", "task", "text", "id", "protocol", "\x00", "é"]
    return {rng.choice(keys): garbage_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def garbage_sdp(rng: random.Random) -> str:
    lines = [rng.choice(SDP_LINES) for _ in range(rng.randrange(1, 12))]
    if rng.random() < 0.3:
        lines.insert(rng.randrange(len(lines) + 1), SDP_LINES[4])
    if rng.random() < 0.3:
        lines = [line[: rng.randrange(len(line) + 1)] for line in lines]
    return "\r\n".join(lines) + rng.choice(["\r\n", "", "\n"])


def garbage_offer(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(200))
    if kind == 1:
        return json.dumps(garbage_value(rng)).encode()
    if kind == 2:
        text = json.dumps({"sdp": garbage_sdp(rng), "type": "offer"})
        return text[: rng.randrange(len(text))].encode()  # truncated JSON
    body = {"sdp": garbage_sdp(rng), "type": rng.choice(["offer", "offer", "answer", 1])}
    if rng.random() < 0.5:
        body["task"] = rng.choice(["demo_oil_change", "", "nope", 7])
    return json.dumps(body).encode()


def garbage_message(rng: random.Random) -> str | bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        text = json.dumps(garbage_value(rng))
        return text[: rng.randrange(1, len(text) + 1)]
    if kind == 2:
        return json.dumps(
            {
                "type": rng.choice(["question", "task", "reset", "hello", 3]),
                rng.choice(["text", "task", "id", "x"]): garbage_value(rng),
            }
        )
    return "".join(chr(rng.randrange(1, 0x10FFFF) % 0xD800) for _ in range(rng.randrange(1, 60)))


async def test_malformed_offers_and_messages_never_crash_the_server(
    live_server: LiveServer, demo_video: tuple[Path, dict[str, Any]]
) -> None:
    rng = random.Random(20261201)
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post(body: bytes) -> None:
            async with http.post(f"{live_server.url}/offer", data=body) as response:
                payload = await response.json(content_type=None)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status != 200:
                    assert payload["error"]["code"] and payload["error"]["message"], payload

        bodies = [garbage_offer(rng) for _ in range(N_OFFERS)]
        for start in range(0, N_OFFERS, 100):
            await asyncio.gather(*(post(b) for b in bodies[start : start + 100]))
    assert sum(statuses.values()) == N_OFFERS
    assert set(statuses) <= {400, 404, 413}, statuses  # every one refused, with a reason
    assert statuses[400] > N_OFFERS // 2
    assert not live_server.sessions

    client = Client(live_server, demo_video[0])
    try:
        await client.connect()
        for _ in range(N_MESSAGES):
            client.channel.send(garbage_message(rng))
        # Every message is answered (an error, or a question's answer/busy, a task event).
        await wait_for(lambda: len(client.events) >= N_MESSAGES // 2, 120, "replies")
        client.channel.send(json.dumps({"type": "task", "task": "demo_oil_change"}))
        client.channel.send(
            json.dumps({"type": "question", "text": "Which step is this?", "id": "last"})
        )
        await wait_for(
            lambda: any(
                e["type"] == "answer" and e["id"] == "last" and e["final"] for e in client.events
            ),
            120,
            "the session still answers",
        )
        assert client.sid in live_server.sessions
    finally:
        await client.close()
    await wait_for(lambda: not live_server.sessions, 20, "session closed")
