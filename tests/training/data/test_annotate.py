"""Annotation over real HTTP on loopback, with the real openai client and a scripted server.

Failed requests are retried by the openai SDK (``max_retries``); scripted errors carry a short
Retry-After, which the SDK waits instead of its own backoff (0.5 s, doubling), to keep these
tests fast. Answers that do not validate are asked for again by the annotator."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import openai
import pytest
from PIL import Image

from lavia_live.contract.guidance import GUIDANCE_JSON_SCHEMA, Guidance
from lavia_live.contract.prompt import build_guidance_prompt, build_question_prompt
from lavia_live.contract.tasks import TaskContext
from tests.openai_server import (
    Behaviour,
    OpenAIServer,
    content,
    hang,
    hold,
    http_error,
    malformed_json,
    ok,
)
from training.data.annotate import (
    AnnotationError,
    AnnotationRequest,
    AnnotationResult,
    AnnotatorOptions,
    OpenAIAnnotator,
    estimate_prompt_tokens,
)

TASK = TaskContext(
    id="oil-change",
    title="Change the engine oil",
    steps=("Loosen the drain plug.", "Drain the oil.", "Refill with new oil."),
    guideline="Warm the engine first; never open the drain plug on a hot engine.",
)
# A generous timeout: answers from the loopback server must never run into it, however loaded
# the machine; the tests of a hanging server shorten it.
FAST = AnnotatorOptions(model="test-vlm", api_key_env="", timeout_s=30.0, max_retries=2)
VALID = json.dumps(
    {"current_step": "Drain the oil.", "next_step": "Refill with new oil.", "warning": "none"}
)

MakeAnnotator = Callable[..., OpenAIAnnotator]


def jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (i * 16 % 256, 255 - i * 16 % 256, 7 * i % 256)).save(out, "JPEG")
    return out.getvalue()


FRAMES = tuple(jpeg(i) for i in range(15))


def request(key: str = "clip-0", n_frames: int = 15) -> AnnotationRequest:
    prompt = build_guidance_prompt(TASK, n_frames)
    return AnnotationRequest(key, TASK, prompt, FRAMES[:n_frames])


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as s:
        yield s


@pytest.fixture
async def make_annotator(server: OpenAIServer) -> AsyncIterator[MakeAnnotator]:
    made: list[OpenAIAnnotator] = []

    def make(**changes: object) -> OpenAIAnnotator:
        settings: dict[str, object] = {"base_url": server.base_url, **changes}
        options = replace(FAST, **settings)  # type: ignore[arg-type]
        made.append(OpenAIAnnotator(options))
        return made[-1]

    yield make
    for annotator in made:
        await annotator.aclose()


def assert_billed(result: AnnotationResult, server: OpenAIServer) -> None:
    assert result.prompt_tokens == sum(p for p, _ in server.usages)
    assert result.completion_tokens == sum(c for _, c in server.usages)
    expected = (result.prompt_tokens * 2.50 + result.completion_tokens * 10.00) / 1e6
    assert result.cost_usd == pytest.approx(expected)


async def test_success_sends_frames_prompt_and_schema(
    server: OpenAIServer, make_annotator: MakeAnnotator
) -> None:
    server.script(ok(VALID, usage=(1400, 31)))
    annotator = make_annotator()
    req = request()

    result = await annotator.annotate(req)

    assert result.ok and result.error is None
    assert result.guidance == Guidance("Drain the oil.", "Refill with new oil.", None)
    assert (result.key, result.raw, result.model, result.attempts) == (
        "clip-0",
        VALID,
        "test-vlm",
        1,
    )
    assert (result.prompt_tokens, result.completion_tokens) == (1400, 31)
    assert result.cost_usd == pytest.approx((1400 * 2.5 + 31 * 10) / 1e6)
    assert annotator.name == "openai:test-vlm"

    (sent,) = server.requests
    assert sent.body["model"] == "test-vlm"
    assert sent.body["temperature"] == 0.0 and sent.body["max_tokens"] == 300
    assert sent.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "guidance", "strict": True, "schema": GUIDANCE_JSON_SCHEMA},
    }
    assert sent.headers["Authorization"] == "Bearer EMPTY"
    # The shared prompt, in order: task context, 15 frames oldest first, the request.
    parts = sent.content_parts()
    assert [p["type"] for p in parts] == ["text"] + ["image_url"] * 15 + ["text"]
    assert sent.text() == req.prompt.llava_text().replace("<image>\n", "")
    assert "Change the engine oil" in sent.text() and "2. Drain the oil." in sent.text()
    prefix = "data:image/jpeg;base64,"
    urls = sent.image_urls()
    assert all(url.startswith(prefix) for url in urls)
    assert [base64.b64decode(url.removeprefix(prefix)) for url in urls] == list(FRAMES)
    assert {p["image_url"]["detail"] for p in parts if p["type"] == "image_url"} == {"low"}


@pytest.mark.parametrize(
    ("failures", "why"),
    [
        ([http_error(500, retry_after=0.01)] * 2, "5xx"),
        ([http_error(503, retry_after=0.01), http_error(429, retry_after=0.01)], "5xx then 429"),
        ([hang(3600)], "timeout"),
    ],
)
async def test_failed_requests_are_retried_by_the_client(
    server: OpenAIServer, make_annotator: MakeAnnotator, failures: list[Behaviour], why: str
) -> None:
    server.script(*failures, ok(VALID))
    # A hanging request ends at the client's timeout, which the answered one must beat.
    timeout_s = 1.0 if any(f.kind == "hang" for f in failures) else FAST.timeout_s
    result = await make_annotator(timeout_s=timeout_s).annotate(request())

    assert result.ok, why
    assert result.attempts == 1  # one answer asked for; the SDK sent the request again
    assert len(server.requests) == len(failures) + 1
    assert server.requests[0].body == server.requests[-1].body
    assert result.guidance is not None and result.guidance.next_step == "Refill with new oil."
    assert_billed(result, server)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (malformed_json(), "malformed JSON body"),
        (content('{"step": "Drain the oil."}'), "wrong schema"),
        (
            content('{"current_step": "", "next_step": "Drain the oil.", "warning": null}'),
            "empty step",
        ),
        (content("[1, 2]"), "JSON not an object"),
        (content("I cannot tell from these frames."), "prose"),
    ],
)
async def test_invalid_answers_are_asked_for_again(
    server: OpenAIServer, make_annotator: MakeAnnotator, answer: Behaviour, why: str
) -> None:
    server.script(answer, ok(VALID))
    result = await make_annotator().annotate(request())

    assert result.ok, why
    assert result.attempts == 2 == len(server.requests)
    assert result.guidance is not None and result.guidance.next_step == "Refill with new oil."
    assert result.raw == VALID
    assert_billed(result, server)  # the invalid answer is billed too


async def test_429_honours_retry_after(server: OpenAIServer, make_annotator: MakeAnnotator) -> None:
    # 0.6 s is longer than any first backoff of the SDK's own (0.375-0.5 s).
    server.script(http_error(429, "Rate limit reached", retry_after=0.6), ok(VALID))
    started = time.monotonic()
    result = await make_annotator().annotate(request())
    elapsed = time.monotonic() - started

    assert result.ok and result.attempts == 1
    first, second = server.requests
    assert 0.6 <= second.at - first.at < elapsed < 5.0
    assert_billed(result, server)


async def test_persistent_500_fails_after_max_retries(
    server: OpenAIServer, make_annotator: MakeAnnotator, caplog: pytest.LogCaptureFixture
) -> None:
    server.default = http_error(500, "The server had an error", retry_after=0.01)
    with caplog.at_level(logging.WARNING, logger="training.data.annotate"):
        result = await make_annotator(max_retries=3).annotate(request())

    assert not result.ok and result.guidance is None
    assert result.attempts == 1 and len(server.requests) == 4
    assert result.error == "HTTP 500: The server had an error (after 3 retries)"
    assert (result.raw, result.prompt_tokens, result.cost_usd) == ("", 0, 0.0)
    assert [r.getMessage() for r in caplog.records] == [
        f"clip-0: annotation failed: {result.error}"
    ]


async def test_malformed_every_time(server: OpenAIServer, make_annotator: MakeAnnotator) -> None:
    server.default = malformed_json()
    result = await make_annotator(max_answer_attempts=2).annotate(request())

    assert not result.ok and result.attempts == 2 == len(server.requests)
    assert result.error == "malformed response after 2 attempts: body is not a chat completion"


async def test_connection_refused(make_annotator: MakeAnnotator) -> None:
    async with OpenAIServer() as gone:
        base_url = gone.base_url
    result = await make_annotator(base_url=base_url, max_retries=1).annotate(request())

    assert not result.ok and result.attempts == 1
    assert result.error is not None
    assert result.error.startswith("connection error: ")
    assert result.error.endswith(" (after 1 retry)")


async def test_timeouts_every_time(server: OpenAIServer, make_annotator: MakeAnnotator) -> None:
    server.default = hang(3600)  # until the server closes
    result = await make_annotator(timeout_s=0.2, max_retries=1).annotate(request())

    assert not result.ok and result.attempts == 1 and len(server.requests) == 2
    assert result.error == "timeout: nothing received within 0.2 s (after 1 retry)"


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_not_retried(
    server: OpenAIServer, make_annotator: MakeAnnotator, status: int
) -> None:
    server.default = http_error(status, "Incorrect API key provided")
    result = await make_annotator().annotate(request())

    assert not result.ok and result.attempts == 1 == len(server.requests)
    assert result.error == f"HTTP {status}: Incorrect API key provided"


async def test_garbage_every_time_keeps_raw(
    server: OpenAIServer, make_annotator: MakeAnnotator
) -> None:
    server.default = content("lorem ipsum")
    result = await make_annotator(max_answer_attempts=3).annotate(request())

    assert not result.ok and result.attempts == 3
    assert result.error is not None
    assert result.error.startswith("answer did not match the guidance format after 3 attempts")
    assert "lorem ipsum" in result.error
    assert result.raw == "lorem ipsum"
    assert len(server.usages) == 3 and result.prompt_tokens > 0
    assert_billed(result, server)  # failed answers are billed too


async def test_text_answers_without_structured_output(
    server: OpenAIServer, make_annotator: MakeAnnotator
) -> None:
    text = "Current step: Drain the oil.\nNext step: Refill with new oil.\nWarning: Hot oil!"
    server.script(ok(text))
    result = await make_annotator(structured_output=False, image_detail=None).annotate(request())

    assert result.guidance == Guidance("Drain the oil.", "Refill with new oil.", "Hot oil!")
    (sent,) = server.requests
    assert "response_format" not in sent.body
    assert all("detail" not in p.get("image_url", {}) for p in sent.content_parts())


async def test_concurrency_is_bounded(server: OpenAIServer, make_annotator: MakeAnnotator) -> None:
    releases = [asyncio.Event() for _ in range(6)]
    server.script(*(hold(r) for r in releases))
    annotator = make_annotator(max_concurrency=2, timeout_s=10.0)

    def two_held(received: int) -> Callable[[], bool]:
        return lambda: len(server.requests) == received and server.in_flight == 2

    tasks = [asyncio.create_task(annotator.annotate(request(f"clip-{i}"))) for i in range(6)]
    for i in range(0, 6, 2):
        # Two more requests reached the server and are held; the others wait on the semaphore.
        await server.wait_until(two_held(i + 2))
        releases[i].set()
        releases[i + 1].set()
    results = await asyncio.gather(*tasks)

    assert server.max_in_flight == 2
    assert [r.key for r in results] == [f"clip-{i}" for i in range(6)]
    assert all(r.ok and r.attempts == 1 for r in results)


async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAVIA_TEST_ANNOTATOR_KEY", raising=False)
    with pytest.raises(AnnotationError, match="LAVIA_TEST_ANNOTATOR_KEY"):
        OpenAIAnnotator(AnnotatorOptions(api_key_env="LAVIA_TEST_ANNOTATOR_KEY"))


async def test_key_from_env_is_sent(
    server: OpenAIServer, make_annotator: MakeAnnotator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAVIA_TEST_ANNOTATOR_KEY", "sk-test-123")
    result = await make_annotator(api_key_env="LAVIA_TEST_ANNOTATOR_KEY").annotate(request())

    assert result.ok
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test-123"


async def test_bad_requests_raise(make_annotator: MakeAnnotator) -> None:
    annotator = make_annotator()
    with pytest.raises(AnnotationError, match="15 images but 3 frames"):
        await annotator.annotate(replace(request(), frames_jpeg=FRAMES[:3]))
    question = build_question_prompt(TASK, 15, "Which wrench?")
    with pytest.raises(AnnotationError, match="guidance prompt"):
        await annotator.annotate(replace(request(), prompt=question))


def test_estimate_prompt_tokens() -> None:
    prompt = build_guidance_prompt(TASK, 15)
    text_chars = len(prompt.llava_text().replace("<image>\n", ""))
    low = estimate_prompt_tokens(prompt, 15)
    assert low == 7 + -(-text_chars // 4) + 15 * 85
    assert estimate_prompt_tokens(prompt, 15, "high") == low + 15 * 170
    with pytest.raises(ValueError, match="detail"):
        estimate_prompt_tokens(prompt, 15, "ultra")


async def test_server_streams_and_lists_models(server: OpenAIServer) -> None:
    """The test server speaks the streaming protocol too (for the serving engine's tests)."""
    server.script(ok("Current step: Drain the oil.", usage=(50, 9)))
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="x", max_retries=0, timeout=5.0
    ) as client:
        models = await client.models.list()
        stream = await client.chat.completions.create(
            model="test-vlm",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage

    assert [m.id for m in models.data] == ["test-vlm"]
    assert len(pieces) > 1 and "".join(pieces) == "Current step: Drain the oil."
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (50, 9)
