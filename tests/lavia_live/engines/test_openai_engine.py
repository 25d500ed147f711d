"""The OpenAI-compatible engine over real HTTP on loopback (the protocol SGLang speaks)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from lavia_live.contract.prompt import build_guidance_prompt
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import EngineError, GenerationOptions, complete
from lavia_live.engines.openai import OpenAIEngine, OpenAIEngineOptions
from tests.openai_server import OpenAIServer, content, http_error, ok

TASK = TaskLibrary.load().require("demo_oil_change")
ANSWER = "Current step: Drain the old oil into the pan.\nNext step: Refit and tighten the drain plug.\nWarning: none"


def jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10 * i, 200 - 10 * i, 7)).save(out, "JPEG")
    return out.getvalue()


def engine(server: OpenAIServer, **kw: object) -> OpenAIEngine:
    options = OpenAIEngineOptions(
        model="served-vlm", base_url=server.base_url, api_key_env="", backoff_s=0.01, **kw
    )  # type: ignore[arg-type]
    return OpenAIEngine(options)


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


async def test_retries_server_errors_before_the_first_token() -> None:
    async with OpenAIServer() as server:
        server.script(http_error(503), http_error(429, retry_after=0.01), ok(ANSWER))
        e = engine(server)
        text = await complete(e, build_guidance_prompt(TASK, 1), [jpeg(0)], GenerationOptions())
        await e.aclose()
        assert text == ANSWER and len(server.requests) == 3


async def test_client_errors_and_persistent_failures_are_specific() -> None:
    async with OpenAIServer() as server:
        server.script(http_error(401, "bad key"))
        e = engine(server)
        with pytest.raises(EngineError, match="HTTP 401: bad key"):
            await complete(e, build_guidance_prompt(TASK, 1), [jpeg(0)], GenerationOptions())
        server.default = http_error(500, "down")
        with pytest.raises(EngineError, match="HTTP 500: down after 3 attempts"):
            await complete(e, build_guidance_prompt(TASK, 1), [jpeg(0)], GenerationOptions())
        await e.aclose()


async def test_garbage_answers_are_returned_as_text_for_the_parser() -> None:
    async with OpenAIServer() as server:
        server.script(content("\x00 nonsense {"))
        e = engine(server)
        text = await complete(e, build_guidance_prompt(TASK, 1), [jpeg(0)], GenerationOptions())
        await e.aclose()
    assert text == "\x00 nonsense {"


def test_missing_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAVIA_TEST_KEY", raising=False)
    with pytest.raises(EngineError, match="LAVIA_TEST_KEY"):
        OpenAIEngine(OpenAIEngineOptions(api_key_env="LAVIA_TEST_KEY"))
