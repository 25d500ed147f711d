"""The OpenAI-compatible engine over real HTTP on loopback (the protocol SGLang speaks).

Retries are the openai SDK's (its ``_base_client``): it waits what ``Retry-After`` asks (up to
two minutes), else 0.5 s for the first retry, less up to 25 % of jitter, doubling to 8 s.
Scripted errors carry a short Retry-After where the wait itself is not under test."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import pytest
from PIL import Image

from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import EngineError, GenerationOptions, Usage, complete
from lavia_live.engines.factory import open_engine
from lavia_live.engines.openai import OpenAIEngine, OpenAIEngineOptions
from tests.openai_server import (
    OpenAIServer,
    content,
    cut,
    hang,
    http_error,
    malformed_json,
    ok,
    slow_first_token,
)

TASK = TaskLibrary.load().require("demo_oil_change")
ANSWER = "Current step: Drain the old oil into the pan.\nNext step: Refit and tighten the drain plug.\nWarning: none"


def jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10 * i, 200 - 10 * i, 7)).save(out, "JPEG")
    return out.getvalue()


def engine(server: OpenAIServer, **kw: Any) -> OpenAIEngine:
    return OpenAIEngine(
        OpenAIEngineOptions(model="served-vlm", base_url=server.base_url, api_key_env="", **kw)
    )


async def ask(server: OpenAIServer, **options: Any) -> str:
    """One clip's whole answer from an engine on ``server`` (closed after)."""
    e = engine(server, **options)
    try:
        return await complete(e, build_guidance_prompt(TASK, 1), [jpeg(0)], GenerationOptions())
    finally:
        await e.aclose()


async def failure(server: OpenAIServer, **options: Any) -> str:
    """The :class:`EngineError` that asking ``server`` for one clip's answer ends in."""
    with pytest.raises(EngineError) as caught:
        await ask(server, **options)
    return str(caught.value)


async def test_streams_the_answer_and_sends_frames_in_order() -> None:
    frames = [jpeg(i) for i in range(15)]
    async with OpenAIServer() as server:
        server.script(ok(ANSWER))
        e = engine(server)
        pieces = [
            p async for p in e.stream(build_guidance_prompt(TASK, 15), frames, GenerationOptions())
        ]
        await e.aclose()
        (request,) = server.requests
    assert len(pieces) > 1 and "".join(pieces) == ANSWER
    assert request.body["stream"] is True and request.body["model"] == "served-vlm"
    urls = request.image_urls()
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == frames
    assert request.content_parts()[0]["text"].startswith("You are a task assistant")


@pytest.mark.parametrize("detail", ["low", "high", "auto", None])
async def test_image_detail_from_the_config_and_usage_from_the_stream(detail: str | None) -> None:
    async with OpenAIServer() as server:
        server.script(ok(ANSWER, usage=(1234, 56)))
        e = open_engine(server.base_url, api_model="m", api_key_env="", image_detail=detail)
        usage = Usage()
        options = GenerationOptions(usage=usage)
        text = await complete(e, build_guidance_prompt(TASK, 2), [jpeg(0), jpeg(1)], options)
        await e.aclose()
        (request,) = server.requests
    assert text == ANSWER
    images = [p["image_url"] for p in request.content_parts() if p["type"] == "image_url"]
    assert len(images) == 2
    assert all(i.get("detail") == detail for i in images)  # None: no detail sent
    assert request.body["stream_options"] == {"include_usage": True}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.requests) == (1234, 56, 1)


@pytest.mark.parametrize(
    ("status", "code"), [(429, "rate_limited"), (503, "engine_unavailable"), (400, "engine_error")]
)
async def test_failures_carry_a_code_for_clients(status: int, code: str) -> None:
    async with OpenAIServer() as server:
        server.default = http_error(status, retry_after=0.01)
        e = engine(server, max_retries=0)
        with pytest.raises(EngineError) as caught:
            await complete(e, build_guidance_prompt(TASK, 1), [jpeg(0)], GenerationOptions())
        await e.aclose()
    assert caught.value.code == code


async def test_429_with_retry_after_is_retried_after_that_wait() -> None:
    async with OpenAIServer() as server:
        # 0.7 s is longer than any first backoff of the SDK's own (0.375-0.5 s).
        server.script(http_error(429, "Rate limit reached", retry_after=0.7), ok(ANSWER))
        started = time.monotonic()
        text = await ask(server)
        elapsed = time.monotonic() - started
        first, second = server.requests
    assert text == ANSWER
    assert 0.7 <= second.at - first.at < elapsed < 5.0


async def test_5xx_then_success_with_the_sdks_own_backoff() -> None:
    async with OpenAIServer() as server:
        server.script(http_error(500), ok(ANSWER))  # no Retry-After: the SDK's backoff
        text = await ask(server)
        first, second = server.requests
    assert text == ANSWER
    assert second.at - first.at >= 0.5 * 0.75  # INITIAL_RETRY_DELAY less at most 25 % jitter


async def test_5xx_is_retried_max_retries_times_then_named() -> None:
    async with OpenAIServer() as server:
        server.default = http_error(503, "Service overloaded", retry_after=0.05)
        error = await failure(server, max_retries=2)
        assert len(server.requests) == 3
    assert error == "openai:served-vlm: HTTP 503: Service overloaded (after 2 retries)"


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(status: int) -> None:
    async with OpenAIServer() as server:
        server.script(http_error(status, "Invalid image"), ok(ANSWER))
        error = await failure(server)
        assert len(server.requests) == 1
    assert error == f"openai:served-vlm: HTTP {status}: Invalid image"


async def test_stream_cut_mid_answer_is_an_error_and_not_asked_again() -> None:
    async with OpenAIServer() as server:
        server.script(cut(ANSWER, after=3), ok(ANSWER))
        e = engine(server)
        pieces: list[str] = []
        with pytest.raises(EngineError) as caught:
            async for piece in e.stream(
                build_guidance_prompt(TASK, 1), [jpeg(0)], GenerationOptions()
            ):
                pieces.append(piece)
        await e.aclose()
        assert len(server.requests) == 1
    assert len(pieces) == 3 and ANSWER.startswith("".join(pieces))
    assert str(caught.value).startswith(
        f"openai:served-vlm: stream broke off after {len(''.join(pieces))} characters: "
        "connection error: peer closed connection"
    )


async def test_slow_first_token_beyond_the_timeout_is_an_error() -> None:
    async with OpenAIServer() as server:
        server.script(slow_first_token(3600, ANSWER), ok(ANSWER))  # until the server closes
        started = time.monotonic()
        error = await failure(server, timeout_s=0.3)
        elapsed = time.monotonic() - started
        # The response had started: the SDK does not send the request again.
        assert len(server.requests) == 1
    assert error == "openai:served-vlm: timeout: nothing received within 0.3 s"
    assert 0.3 <= elapsed < 3.0


async def test_no_response_within_the_timeout_is_retried_then_named() -> None:
    async with OpenAIServer() as server:
        server.default = hang(3600)  # not even the headers, until the server closes
        error = await failure(server, timeout_s=0.2, max_retries=1)
        assert len(server.requests) == 2
    assert error == "openai:served-vlm: timeout: nothing received within 0.2 s (after 1 retry)"


async def test_a_body_that_is_no_event_stream_is_an_error() -> None:
    async with OpenAIServer() as server:
        server.script(malformed_json(), ok(ANSWER))  # 200, JSON content type, not even JSON
        error = await failure(server)
        assert len(server.requests) == 1
    assert error == "openai:served-vlm: the stream ended without a finish reason"


async def test_garbage_answers_are_returned_as_text_for_the_parser() -> None:
    async with OpenAIServer() as server:
        server.script(content("\x00 nonsense {"))
        text = await ask(server)
    assert text == "\x00 nonsense {"


def test_missing_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAVIA_TEST_KEY", raising=False)
    with pytest.raises(EngineError, match="LAVIA_TEST_KEY"):
        OpenAIEngine(OpenAIEngineOptions(api_key_env="LAVIA_TEST_KEY"))
