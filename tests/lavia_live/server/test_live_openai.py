"""``lavia serve`` with the OpenAI-compatible engine (GPT-4o, SGLang, vLLM) in live sessions:
real aiortc peers over loopback, a looping demo video, and the loopback fake speaking the
OpenAI wire protocol. Rate limits and server errors become one ``error`` event each while the
session goes on; requests are cancelled (their HTTP stream closed, seen by the server) when
superseded; tokens and cost add up in ``state`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lavia_live.config import Settings
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.factory import open_engine
from lavia_live.server.app import LiveServer
from lavia_live.server.assistant import LiveAssistant, LoopOptions
from lavia_live.server.scheduler import Scheduler
from tests.lavia_live.server.conftest import running_server, wait_for
from tests.lavia_live.server.test_live import Client
from tests.openai_server import OpenAIServer, content, hold, http_error, ok, slow_first_token

STEPS = (
    "Slide the oil pan under the engine.",
    "Unscrew the yellow oil filler cap.",
    "Loosen the drain plug with the ratchet.",
    "Drain the old oil into the pan.",
    "Refit and tighten the drain plug.",
)


def answer(current: int) -> str:
    return f"Current step: {STEPS[current]}\nNext step: {STEPS[current + 1]}\nWarning: none"


def settings(**engine: Any) -> Settings:
    """One guidance request per sampled frame from the first, every answer announced, no
    speech or listening (not under test here)."""
    return Settings.model_validate(
        {
            "engine": engine,
            "sampling": {"min_frames_for_guidance": 1},
            "serve": {"confirm_answers": 1},
            "speech": {"enabled": False},
            "listening": {"enabled": False},
        }
    )


def served(fake: OpenAIServer, config: Settings) -> running_server:
    return running_server(config, fake.base_url, api_model=fake.model_id, api_key_env="")


async def test_rate_limits_and_server_errors_are_one_error_each_and_guidance_resumes(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    config = settings(price_per_mtok_input=2.5, price_per_mtok_output=10.0)
    async with OpenAIServer() as fake, served(fake, config) as server:
        fake.default = ok(answer(1))
        # The SDK tries each request three times (max_retries 2); two clips are refused with
        # 429 (a short Retry-After), then two fail with 503, then the server recovers.
        fake.script(
            *[http_error(429, "Rate limit reached for gpt-4o", retry_after=0.05)] * 6,
            *[http_error(503, "The server is overloaded")] * 6,
        )
        client = Client(server, demo_video[0])
        try:
            await client.connect()
            await wait_for(lambda: client.of("guidance"), 40, "guidance once the server recovers")
            errors = client.of("error")
            # One event per outage, not one per clip: the same failure again is only counted.
            assert [e["code"] for e in errors] == ["rate_limited", "engine_unavailable"], errors
            assert (
                "HTTP 429: Rate limit reached for gpt-4o (after 2 retries)" in errors[0]["message"]
            )
            assert "HTTP 503: The server is overloaded (after 2 retries)" in errors[1]["message"]
            assert client.events.index(errors[1]) < client.events.index(client.of("guidance")[0])
            assert client.of("guidance")[0]["current_step"] == STEPS[1]
            # Tokens: each state event shows the usage of the answers so far (the server's
            # numbers, summed in order) and its cost at the configured prices.
            sums = [(0, 0)]
            await wait_for(lambda: len(fake.usages) >= 3, 20, "three answers")
            await wait_for(lambda: _counted(client, 2), 20, "state with two answers counted")
            for prompt, completion in fake.usages:
                sums.append((sums[-1][0] + prompt, sums[-1][1] + completion))
            counted = [s for s in client.of("state") if s["tokens"] is not None]
            for state in counted:
                tokens = (state["tokens"]["prompt"], state["tokens"]["completion"])
                assert tokens in sums[1:], (tokens, sums)
                cost = (tokens[0] * 2.5 + tokens[1] * 10.0) / 1e6
                assert state["cost_usd"] == pytest.approx(cost, abs=1e-6)
            metrics = await _metrics(server)
            assert metrics['lavia_errors_total{code="rate_limited"}'] == 2.0
            assert metrics['lavia_errors_total{code="engine_unavailable"}'] == 2.0
            prompt_total = metrics['lavia_engine_tokens_total{kind="prompt"}']
            assert prompt_total >= counted[-1]["tokens"]["prompt"] > 0
            # the state event's cost is rounded to 6 decimals, the metric is not
            assert metrics["lavia_engine_cost_usd_total"] >= counted[-1]["cost_usd"] - 5e-7
            assert counted[-1]["cost_usd"] > 0
        finally:
            await client.close()
        await wait_for(lambda: not server.sessions, 15, "session closed")


def _counted(client: Client, answers: int) -> bool:
    states = [s for s in client.of("state") if s["tokens"] is not None]
    return len(states) >= 1 and states[-1]["tokens"]["completion"] >= answers


async def _metrics(server: LiveServer) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as r:
        text = await r.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_a_stale_request_is_closed_when_a_newer_clip_comes_and_a_slow_one_still_answers(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    async with OpenAIServer() as fake, served(fake, settings(supersede_after_s=1.5)) as server:
        fake.default = ok(answer(2))
        # The first request never starts its answer (stale: superseded by a clip 1.5 s on);
        # the next starts after 2.5 s, slower than the limit, but a request that replaced a
        # superseded one runs to its end: a slow model still gives guidance.
        fake.script(slow_first_token(30, answer(0)), slow_first_token(2.5, answer(1)))
        client = Client(server, demo_video[0])
        cancels: list[float] = []
        try:
            await client.connect()
            session = server.sessions[client.sid]
            scheduler = session.assistant._scheduler
            cancel = scheduler.cancel_running

            def cancel_running(key: str) -> bool:
                cancels.append(asyncio.get_running_loop().time())
                return cancel(key)

            scheduler.cancel_running = cancel_running  # type: ignore[method-assign]
            await fake.wait_until(lambda: bool(fake.disconnects), 20)
            (index, closed_at), *_ = fake.disconnects
            assert index == 0 and cancels
            closed_ms = (closed_at - cancels[0]) * 1000
            print(f"stream closed {closed_ms:.1f} ms after the supersede")
            assert 0 <= closed_ms < 500
            await wait_for(lambda: len(client.of("guidance")) >= 2, 30, "guidance goes on")
            shown = [g["current_step"] for g in client.of("guidance")]
            assert STEPS[0] not in shown  # the stale answer never came
            assert shown[:2] == [STEPS[1], STEPS[2]], shown  # the slow one was not cut
            assert [i for i, _ in fake.disconnects] == [0]
            assert len(cancels) == 1
            metrics = await _metrics(server)
            assert metrics['lavia_engine_requests_cancelled_total{reason="superseded"}'] == 1.0
        finally:
            await client.close()
        await wait_for(lambda: not server.sessions, 15, "session closed")


async def test_reset_task_switch_and_the_session_end_close_the_request_in_flight(
    demo_video: tuple[Path, dict[str, Any]],
) -> None:
    async with OpenAIServer() as fake, served(fake, settings(supersede_after_s=None)) as server:
        release = asyncio.Event()  # never set: each request is held until it is closed
        fake.default = hold(release, ok(answer(0)))
        client = Client(server, demo_video[0])
        try:
            await client.connect()
            for k, message in enumerate(
                [{"type": "reset"}, {"type": "task", "task": "honda_gx160_oil_change"}]
            ):
                await fake.wait_until(lambda k=k: len(fake.requests) > k, 20)
                sent_at = asyncio.get_running_loop().time()
                client.channel.send(json.dumps(message))
                await fake.wait_until(lambda k=k: len(fake.disconnects) > k, 5)
                assert fake.disconnects[k][0] == k
                closed_ms = (fake.disconnects[k][1] - sent_at) * 1000
                print(f"{message['type']}: stream closed {closed_ms:.1f} ms after it was sent")
            await fake.wait_until(lambda: len(fake.requests) > 2, 20)
            honda = TaskLibrary.load().require("honda_gx160_oil_change")
            assert f"Task: {honda.title}" in fake.requests[2].text()  # the new task's prompt
        finally:
            await client.close()
        await fake.wait_until(lambda: len(fake.disconnects) > 2, 10)  # the session's end
        assert [i for i, _ in fake.disconnects] == [0, 1, 2]
        assert not client.of("guidance")
        metrics = await _metrics(server)
        assert metrics['lavia_engine_requests_cancelled_total{reason="reset"}'] == 2.0


@contextlib.asynccontextmanager
async def loop_without_webrtc(
    fake: OpenAIServer, events: list[Any]
) -> AsyncIterator[LiveAssistant]:
    """One session's live loop on the demo task (as ``lavia watch`` runs it), its model the
    loopback fake, its events into ``events``; scheduler and engine closed on exit."""
    config = settings()
    engine = open_engine(fake.base_url, api_model=fake.model_id, api_key_env="")
    scheduler = Scheduler(engine.max_concurrency)
    scheduler.start()
    try:
        yield LiveAssistant(
            "s1",
            TaskLibrary.load().require("demo_oil_change"),
            settings=config,
            options=LoopOptions.of(config, 448),
            engine=engine,
            scheduler=scheduler,
            executor=None,
            emit=events.append,
        )
    finally:
        await scheduler.aclose()
        await engine.aclose()


async def test_a_question_cancelled_by_a_reset_ends_with_an_empty_final_answer() -> None:
    """The live loop without WebRTC (as ``lavia watch`` runs it): a question in flight when
    the person resets is cancelled, its stream closed, and its answer ends empty."""
    events: list[Any] = []
    async with OpenAIServer() as fake:
        fake.default = hold(asyncio.Event())
        async with loop_without_webrtc(fake, events) as assistant:
            qid = assistant.ask("What comes next?")
            await fake.wait_until(lambda: len(fake.requests) == 1, 5)
            assistant.reset()
            await fake.wait_until(lambda: len(fake.disconnects) == 1, 5)
            await wait_for(lambda: events, 5, "the answer's end")
    assert [(e.type, e.id, e.final, e.text) for e in events] == [("answer", qid, True, "")]


async def test_an_answer_started_early_is_held_until_confirmed_and_a_withdrawn_one_is_unseen() -> (
    None
):
    """A voice question answered before its utterance ended: nothing reaches the client
    until it is confirmed, then everything in order; a withdrawn one's stream is closed
    and it leaves no event."""
    events: list[Any] = []
    async with OpenAIServer() as fake:
        release = asyncio.Event()
        fake.script(hold(release), content("Next: Drain the old oil into the pan."))
        async with loop_without_webrtc(fake, events) as assistant:
            withdrawn = assistant.ask_held("what do I do", "voice-1")
            assert withdrawn is not None
            await fake.wait_until(lambda: len(fake.requests) == 1, 5)
            withdrawn.withdraw()  # the person went on speaking
            await fake.wait_until(lambda: len(fake.disconnects) == 1, 5)
            held = assistant.ask_held("what do I do next", "voice-2")
            assert held is not None and assistant.ask_held("", "voice-3") is None
            await fake.wait_until(lambda: len(fake.requests) == 2, 5)
            await wait_for(lambda: held.request is not None and held.request.done(), 5, "done")
            assert events == []  # answered, but held back
            held.confirm()
            assert "what do I do next" in fake.requests[1].text()
    answers = [(e.id, e.final, e.delta or e.text) for e in events]
    assert answers[-1] == ("voice-2", True, "Next: Drain the old oil into the pan.")
    assert {a[0] for a in answers} == {"voice-2"} and len(answers) > 1
