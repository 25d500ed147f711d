"""``lavia serve`` end to end with real aiortc peers over loopback and the embedded model."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from lavia_live.server.app import LiveServer
from lavia_live.watch import stream_to_server
from tests.lavia_live.server.conftest import make_settings, running_server, wait_for

STEP_LAG_S = 8.0  # sampling (1 s), the model on 2 busy cores, the tracker's confirmation


def dedup(values: list[Any]) -> list[Any]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def step_starts(truth: dict[str, Any]) -> dict[int, float]:
    return {span["step"]: span["start_frame"] / truth["fps"] for span in truth["spans"]}


async def test_streamed_demo_video_gets_guidance_that_follows_the_ground_truth(
    live_server: LiveServer, demo_video: tuple[Path, dict[str, Any]]
) -> None:
    video, truth = demo_video
    events: list[dict[str, Any]] = []
    sid = await stream_to_server(
        live_server.url, str(video), task="demo_oil_change", on_event=events.append
    )
    types = {e["type"] for e in events}
    assert {"hello", "guidance", "state"} <= types, types
    hello = events[0]
    assert hello["type"] == "hello" and hello["session"] == sid and hello["protocol"] == 1
    guidance = [e for e in events if e["type"] == "guidance"]
    announced = [g["current_index"] for g in guidance]
    # The steps come in the video's order (a step may be confirmed late, never undone).
    assert announced == sorted(announced), announced
    starts = step_starts(truth)
    # Most steps are announced within a few seconds of their start (times on the client's
    # clock, which starts at the offer, within a second of the video's first frame).
    first_seen = {g["current_index"]: g["t"] for g in reversed(guidance)}
    on_time = [
        s for s, t0 in starts.items() if s in first_seen and first_seen[s] - t0 <= STEP_LAG_S
    ]
    assert len(on_time) >= len(starts) - 2, (first_seen, starts)
    assert guidance[-1]["done"] == sorted(guidance[-1]["done"])
    # lavia watch on the same file (the same loop, every clip answered) tells the same steps.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lavia_live.cli", "watch", str(video), "--fast",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()
    watched = [json.loads(line) for line in out.decode().splitlines()]
    assert all(w["t"] >= 0 for w in watched)
    watch_steps = [w["current_index"] for w in watched if w["type"] == "guidance"]
    assert dedup(watch_steps) == dedup(announced), (watch_steps, announced)
    state = [e for e in events if e["type"] == "state"][-1]
    assert state["frames_sampled"] >= 10 and state["frames_received"] >= state["frames_sampled"]
    await wait_for(lambda: not live_server.sessions, 15, "the session closes with the client")


class Client:
    """A minimal protocol client: a peer with a looping demo video and the data channel."""

    def __init__(self, server: LiveServer, video: Path) -> None:
        self.server = server
        self.pc = RTCPeerConnection()
        self.player = MediaPlayer(str(video), loop=True)
        self.events: list[dict[str, Any]] = []
        self.channel = self.pc.createDataChannel("lavia")
        self.channel.on("message", lambda m: self.events.append(json.loads(m)))
        self.sid = ""

    async def offer(self, task: str = "demo_oil_change") -> dict[str, Any]:
        """The offer body for this peer (video track and data channel, ICE gathered)."""
        assert self.player.video is not None
        self.pc.addTrack(self.player.video)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": "offer", "task": task}

    async def accept(self, answer: dict[str, Any]) -> Client:
        """Apply the server's answer and wait for its hello."""
        self.sid = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await wait_for(lambda: self.of("hello"), 20, "hello")
        return self

    async def connect(self, task: str = "demo_oil_change") -> Client:
        status, body = await post_offer(self.server, await self.offer(task))
        assert status == 200, body
        return await self.accept(body)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def close(self) -> None:
        if self.player.video is not None:
            self.player.video.stop()
        await self.pc.close()


async def post_offer(
    server: LiveServer, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/offer",
            data=raw if raw is not None else json.dumps(body),
            headers=headers or {},
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_questions_task_switch_reset_and_garbage_messages_in_one_session(
    live_server: LiveServer, demo_video: tuple[Path, dict[str, Any]]
) -> None:
    client = Client(live_server, demo_video[0])
    try:
        await client.connect()
        for garbage in ("not json", '{"type": "shout"}', "[1, 2]", "x" * 5000, b"\x00\x01"):
            client.channel.send(garbage)
        client.channel.send(json.dumps({"type": "question", "text": ""}))
        await wait_for(lambda: len(client.of("error")) >= 6, 20, "an error per bad message")
        codes = [e["code"] for e in client.of("error")]
        assert codes[:5] == [
            "bad_json",
            "unknown_type",
            "bad_message",
            "message_too_large",
            "bad_message",
        ]
        assert codes[5] == "bad_message"  # an empty question
        # The session goes on: a question is answered, streamed, then final.
        client.channel.send(
            json.dumps({"type": "question", "text": "What do I do next?", "id": "q1"})
        )
        await wait_for(
            lambda: any(a["final"] and a["id"] == "q1" for a in client.of("answer")), 60, "answer"
        )
        answer = [a for a in client.of("answer") if a["id"] == "q1"]
        deltas = "".join(a["delta"] for a in answer if not a["final"])
        assert answer[-1]["text"] == deltas.strip() and answer[-1]["text"]
        # Switching the task mid-session: a task event, and the session goes on.
        client.channel.send(json.dumps({"type": "task", "task": "honda_gx160_oil_change"}))
        client.channel.send(json.dumps({"type": "task", "task": "no_such_task"}))
        await wait_for(lambda: client.of("task"), 20, "task event")
        assert client.of("task")[0]["task"]["id"] == "honda_gx160_oil_change"
        await wait_for(lambda: client.of("error")[-1]["code"] == "unknown_task", 20)
        session = live_server.sessions[client.sid]
        assert session.task.id == "honda_gx160_oil_change"
        client.channel.send(json.dumps({"type": "reset"}))
        sampled = session.assistant.frames_sampled
        await wait_for(lambda: session.assistant.frames_sampled > sampled + 1, 20, "video goes on")
        assert session.assistant.tracker.announced is None or client.of("guidance")
    finally:
        await client.close()
    await wait_for(lambda: not live_server.sessions, 15, "session closed")


async def test_bad_offers_get_a_4xx_with_the_reason(live_server: LiveServer) -> None:
    cases: list[tuple[Any, bytes | None, int, str]] = [
        (None, b"{not json", 400, "bad_json"),
        ({"sdp": "v=0", "type": "answer"}, None, 400, "bad_request"),
        ({"type": "offer"}, None, 400, "bad_request"),
        (
            {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer", "task": "nope"},
            None,
            404,
            "unknown_task",
        ),
        ({"sdp": "hello", "type": "offer"}, None, 400, "bad_sdp"),
        ({"sdp": "v=0\r\nm=video garbage\r\n", "type": "offer"}, None, 400, "bad_sdp"),
        (None, b"x" * (70 * 1024), 413, "too_large"),
    ]
    for body, raw, status, code in cases:
        got_status, got = await post_offer(live_server, body, raw=raw)
        assert (got_status, got["error"]["code"]) == (status, code), (body, got)
        assert got["error"]["message"]
    assert not live_server.sessions
    async with aiohttp.ClientSession() as http, http.get(f"{live_server.url}/healthz") as r:
        assert r.status == 200 and (await r.json())["sessions"] == 0


async def test_token_and_session_cap(demo_video: tuple[Path, dict[str, Any]]) -> None:
    settings = make_settings(token="s3cret", max_sessions=1)
    async with running_server(settings) as server:
        status, body = await post_offer(server, {"sdp": "v=0", "type": "offer"})
        assert status == 401 and body["error"]["code"] == "unauthorized"
        auth = {"Authorization": "Bearer s3cret"}
        first = Client(server, demo_video[0])
        offer = await first.offer()
        status, body = await post_offer(server, offer, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, body = await post_offer(server, offer, headers=auth)
        assert status == 200
        await first.accept(body)
        status, refused = await post_offer(server, offer, headers=auth)
        assert status == 503 and refused["error"]["code"] == "server_full"
        # The existing session is unharmed: its video keeps being sampled.
        session = server.sessions[body["session"]]
        sampled = session.assistant.frames_sampled
        await wait_for(lambda: session.assistant.frames_sampled > sampled + 1, 20)
        await first.close()
        await wait_for(lambda: not server.sessions, 15, "session closed")


async def test_a_client_that_stops_sending_video_is_cleaned_up(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    async with running_server(make_settings(idle_timeout_s=2.0)) as server:
        baseline = len(asyncio.all_tasks())
        client = Client(server, demo_video[0])
        try:
            await client.connect()
            session = server.sessions[client.sid]
            await wait_for(lambda: session.assistant.frames_sampled >= 2, 20)
            # The camera vanishes (the sender goes silent, the peer stays): no video for 2 s.
            client.pc.getSenders()[0].replaceTrack(None)
            await wait_for(lambda: not server.sessions, 20, "idle session closed")
            assert session.close_reason.startswith("no video"), session.close_reason
            assert client.of("error")[-1]["code"] == "no_video"
        finally:
            await client.close()
        await wait_for(lambda: len(asyncio.all_tasks()) <= baseline, 20, "no task left")


@pytest.mark.parametrize("how", ["server_stop", "client_close"])
async def test_sessions_leave_no_task_peer_or_thread(
    demo_video: tuple[Path, dict[str, Any]], how: str
) -> None:
    import threading

    threads_before = {t.ident for t in threading.enumerate()}
    tasks_before = len(asyncio.all_tasks())
    async with running_server(make_settings()) as server:
        clients = [await Client(server, demo_video[0]).connect() for _ in range(2)]
        assert len(server.sessions) == 2
        sessions = list(server.sessions.values())
        if how == "client_close":
            for c in clients:
                await c.close()
            await wait_for(lambda: not server.sessions, 20, "sessions closed")
    if how == "server_stop":
        for c in clients:
            await c.close()
    assert all(s.pc.connectionState == "closed" for s in sessions)  # no peer left open
    await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before, 20, "no task left")
    await wait_for(
        lambda: {t.ident for t in threading.enumerate()} <= threads_before | _pool_threads(),
        20,
        "no thread left",
    )


def _pool_threads() -> set[int | None]:
    """asyncio's default executor keeps its idle workers; they are not per-session threads."""
    import threading

    return {t.ident for t in threading.enumerate() if t.name.startswith("asyncio_")}


async def test_an_offer_that_never_connects_is_closed_by_the_connect_timeout(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    async with running_server(make_settings(connect_timeout_s=2.0)) as server:
        baseline = len(asyncio.all_tasks())
        client = Client(server, demo_video[0])
        try:
            status, body = await post_offer(server, await client.offer())
            assert status == 200
            session = server.sessions[body["session"]]
            # The client never applies the answer: ICE never completes on its side.
            await wait_for(lambda: not server.sessions, 20, "unconnected session closed")
            assert session.close_reason == "not connected within 2 s"
            assert session.pc.connectionState == "closed"
        finally:
            await client.close()
        await wait_for(lambda: len(asyncio.all_tasks()) <= baseline, 20, "no task left")
