"""`lavia model-server` on 127.0.0.1: the embedded model served over the OpenAI protocol and
asked by the project's own OpenAI-compatible engine, the `openai` SDK, raw HTTP and
`lavia eval`, on clips of a rendered demo video; a tiny untrained model (it writes until
max_tokens) where an answer must outlast the test's moves; the command as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from PIL import Image

from lavia_live.cli import main
from lavia_live.config.loader import load_settings
from lavia_live.config.settings import ModelServerSettings
from lavia_live.contract.guidance import parse_guidance
from lavia_live.contract.prompt import Prompt, build_question_prompt, parse_llava_text
from lavia_live.contract.records import InstructionRecord, read_records
from lavia_live.contract.tasks import TaskLibrary
from lavia_live.engines.base import GenerationOptions, complete
from lavia_live.engines.factory import frame_max_side, open_engine
from lavia_live.engines.local import LocalEngine
from lavia_live.models import EMBEDDED
from lavia_live.openai_compat import jpeg_data_url
from lavia_live.resources import shipped_path
from lavia_live.server.app import LiveServer
from lavia_live.server.model_server import ModelServer
from lavia_live.watch import stream_to_server
from tests.lavia_live.server.conftest import NothingLeft, make_settings, thread_names, wait_for
from training.config import PipelineSettings
from training.data.build import build_dataset
from training.models.tiny import build_tiny_qwen2_5_vl, task_corpus

pytestmark = pytest.mark.asyncio(loop_scope="module")

TASK = TaskLibrary.load().require("demo_oil_change")
GUIDANCE = GenerationOptions(max_tokens=96)


@pytest.fixture(scope="module")
def records(
    demo_video: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Held-out demo records (seed 4242: not one the embedded model was trained on), built
    as its training data was: frames at 160 px, live-like clips, some questions."""
    out = tmp_path_factory.mktemp("model-server-records")
    settings = load_settings(
        PipelineSettings,
        files=[shipped_path("configs/train_demo.yaml")],
        env={},
        overrides=["data.annotate.questions_per_clip=0.3", "data.extract.min_frames=4"],
    ).settings
    asyncio.run(build_dataset([demo_video[0]], out, settings, progress=False))
    return out / "records.jsonl"


def clip(path: Path, record: InstructionRecord) -> tuple[Prompt, list[bytes]]:
    kind = "guidance" if record.question is None else "question"
    frames = [(path.parent / p).read_bytes() for p in record.image]
    return parse_llava_text(record.prompt_text, kind=kind), frames


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[ModelServer]:
    # one torch thread, as lavia serve runs it beside other work (and far faster on 2 busy
    # cores); process-wide, so `lavia eval --model embedded` below runs the same way
    engine = await asyncio.to_thread(open_engine, EMBEDDED, api_key_env="", cpu_threads=1)
    assert isinstance(engine, LocalEngine)
    server = ModelServer(engine, ModelServerSettings(max_body_mb=1.0, max_images=20))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()
    await engine.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def untrained(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModelServer]:
    """An untrained tiny model: it writes until max_tokens (4000 tokens take many seconds)."""
    folder = build_tiny_qwen2_5_vl(
        tmp_path_factory.mktemp("tiny") / "m", task_corpus([TASK]),
        hidden_size=128, layers=2, vision_hidden=64, vision_depth=1,
    )  # fmt: skip
    engine = LocalEngine(folder, steps_only=False)
    server = ModelServer(engine, ModelServerSettings(queue_size=1), model_id="tiny")
    left = NothingLeft()
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()
    await left.check(5.0)  # no request, task or generation thread outlives the server


def sdk(server: ModelServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key="none", max_retries=0)


def long_question(server: ModelServer) -> dict[str, Any]:
    prompt = build_question_prompt(TASK, 0, "What now?")
    messages = prompt.openai_messages([])
    return {"model": server.model_id, "messages": messages, "max_tokens": 4000, "stream": True}


async def test_the_openai_engine_through_the_server_answers_as_in_process(
    served: ModelServer, records: Path
) -> None:
    rows = read_records(records)
    guidance = [r for r in rows if r.annotation is not None]
    picked = [guidance[0], guidance[len(guidance) // 2], guidance[-1]]
    remote = open_engine(served.url, api_model=served.model_id, api_key_env="")
    try:
        for record in picked:
            prompt, frames = clip(records, record)
            in_process = await complete(served.engine, prompt, frames, GUIDANCE)
            over_http = await complete(remote, prompt, frames, GUIDANCE)
            assert over_http == in_process, record.id
            print(f"{len(frames)} frames, over HTTP as in-process: {over_http!r}")
            assert parse_guidance(in_process).current_step in TASK.steps
        # a question streams token by token, free text
        prompt = build_question_prompt(TASK, len(frames), "What do I do next?")
        options = GenerationOptions(max_tokens=64)
        in_process = await complete(served.engine, prompt, frames, options)
        assert await complete(remote, prompt, frames, options) == in_process
    finally:
        await remote.aclose()


async def test_the_openai_sdk_streaming_and_not(served: ModelServer, records: Path) -> None:
    prompt, frames = clip(records, read_records(records)[-1])
    expected = await complete(served.engine, prompt, frames, GUIDANCE)
    messages: Any = prompt.openai_messages([jpeg_data_url(f) for f in frames], "low")
    client = sdk(served)
    model = served.model_id
    assert [m.id async for m in client.models.list()] == [model] == ["embedded"]

    done = await client.chat.completions.create(model=model, messages=messages, max_tokens=96)
    assert done.object == "chat.completion" and done.model == model
    assert done.choices[0].message.content == expected
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.prompt_tokens > 16 * len(frames)
    assert 10 < done.usage.completion_tokens < 96

    stream = await client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=96, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == done.usage
    assert {c.id for c in chunks} == {chunks[0].id} and all(
        c.object == "chat.completion.chunk" for c in chunks
    )

    # a PNG frame is re-encoded as JPEG; the answer is still held to the task's steps
    png = io.BytesIO()
    Image.open(io.BytesIO(frames[-1])).save(png, "PNG")
    urls = [jpeg_data_url(f) for f in frames[:-1]]
    urls.append("data:image/png;base64," + base64.b64encode(png.getvalue()).decode())
    answer = await client.chat.completions.create(
        model=model,
        messages=prompt.openai_messages(urls),
        max_tokens=96,  # type: ignore[arg-type]
    )
    assert parse_guidance(answer.choices[0].message.content or "").current_step in TASK.steps

    # on the wire: server-sent events, each "data: {json}", then "data: [DONE]"
    body = {"model": model, "messages": messages, "max_tokens": 8, "stream": True}
    url = f"{served.url}/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.text()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    last = json.loads(events[-3].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "length" and "usage" not in last
    await client.close()


async def post(server: ModelServer, data: bytes | dict[str, Any], method: str = "POST",
               path: str = "/chat/completions") -> tuple[int, dict[str, Any], Any]:  # fmt: skip
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    url = server.url + path
    stream = io.BytesIO(body)  # aiohttp warns of large bytes bodies
    async with aiohttp.ClientSession() as http, http.request(method, url, data=stream) as response:
        return response.status, dict(response.headers), await response.json()


async def test_bad_requests_get_openai_errors_and_the_server_goes_on(
    served: ModelServer, records: Path
) -> None:
    prompt, frames = clip(records, read_records(records)[0])
    good = {"model": "embedded", "messages": prompt.openai_messages(
        [jpeg_data_url(f) for f in frames]), "max_tokens": 96}  # fmt: skip

    def with_image(url: str) -> dict[str, Any]:
        part = {"type": "image_url", "image_url": {"url": url}}
        return {**good, "messages": [{"role": "user", "content": [part]}]}

    not_an_image = "data:image/jpeg;base64," + base64.b64encode(b"plain text").decode()
    cases: list[tuple[bytes | dict[str, Any], int, str | None, str]] = [
        (b'{"model": "embedded", "messages": [', 400, None, "not valid JSON"),
        ({"model": "embedded"}, 400, "messages", "Missing required parameter: 'messages'"),
        ({**good, "messages": []}, 400, "messages", "at least 1 item"),
        ({**good, "model": "gpt-4o"}, 404, "model", "does not exist"),
        (with_image("https://example.com/a.jpg"), 400, "messages", "does not fetch"),
        (with_image("data:image/jpeg;base64,%%%not-base64"), 400, "messages", "not valid base64"),
        (with_image(not_an_image), 400, "messages", "could not be decoded"),
        ({**good, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}] * 21}]}, 400, "messages",
         "at most 20"),
        ({**good, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.[0].role", ""),
        ({**good, "n": 2}, 400, "n", ""),
        ({**good, "stop": ["\n"]}, 400, "stop", "not supported"),
        (b"x" * (2**20 + 1), 413, None, "over 1048576 bytes"),
    ]  # fmt: skip
    for data, status, param, words in cases:
        got, _, body = await post(served, data)
        assert got == status, (data if isinstance(data, dict) else data[:40], body)
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and words in error["message"], error
    status, headers, body = await post(served, b"", "GET")
    assert (
        status == 405 and headers["Allow"] == "POST" and "not allowed" in body["error"]["message"]
    )
    status, _, body = await post(served, b"", "GET", "/models/other")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, _, body = await post(served, b"", "GET", "/nothing")
    assert status == 404 and body["error"]["message"] == "Invalid URL (GET /v1/nothing)"

    client = sdk(served)  # the SDK raises its own error types with the server's message
    with pytest.raises(openai.NotFoundError, match="this server serves 'embedded'"):
        await client.chat.completions.create(model="gpt-4o", messages=good["messages"])
    status, _, body = await post(served, good)
    assert status == 200 and parse_guidance(body["choices"][0]["message"]["content"]).ok
    await client.close()


def generating() -> bool:
    return "lavia-local-generate" in set(thread_names())


async def test_a_client_gone_mid_stream_stops_its_generation(untrained: ModelServer) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{untrained.url}/chat/completions", json=long_question(untrained)
        )
        assert response.status == 200
        assert b'"role":"assistant"' in await response.content.readline()
        await response.content.readline()
        assert b'"content"' in await response.content.readline()  # the answer has begun
        assert untrained.running == 1 and generating()
        response.close()  # the connection drops mid-answer
    await wait_for(lambda: untrained.running == 0 and not generating(), 2.0, "generation ended")
    assert untrained.abandoned == 1
    started = time.monotonic()  # the model is free at once for the next request
    short = {**long_question(untrained), "max_tokens": 5, "stream": False}
    status, _, body = await post(untrained, short)
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert time.monotonic() - started < 2.0


async def test_a_full_queue_answers_429_with_retry_after(untrained: ModelServer) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{untrained.url}/chat/completions"
        running = await http.post(url, json=long_question(untrained))
        waiting = asyncio.create_task(http.post(url, json=long_question(untrained)))
        await wait_for(lambda: untrained.running == 1 and untrained.waiting == 1, 5.0, "queued")
        client = sdk(untrained)
        with pytest.raises(openai.RateLimitError, match="The server is busy") as caught:
            await client.chat.completions.create(
                model="tiny", messages=long_question(untrained)["messages"]
            )
        await client.close()
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        assert caught.value.code == "rate_limit_exceeded"
        waiting.cancel()  # leaves the queue
        running.close()
    await wait_for(lambda: untrained.running == untrained.waiting == 0, 2.0, "queue empty")
    assert not generating()


async def test_lavia_eval_scores_the_same_through_the_server(
    served: ModelServer, records: Path, tmp_path: Path
) -> None:
    common = ["--data", str(records), "--limit", "12", "--no-progress"]
    url = [
        "eval", "--model", served.url, "--api-model", served.model_id, "--api-key-env", "",
        "--out", str(tmp_path / "url"),
    ]  # fmt: skip
    assert await asyncio.to_thread(main, [*url, *common]) == 0
    local = ["eval", "--model", EMBEDDED, "--out", str(tmp_path / "local")]
    assert await asyncio.to_thread(main, [*local, *common]) == 0
    over_http, in_process = (
        json.loads((tmp_path / side / "eval.json").read_text()) for side in ("url", "local")
    )
    scores = ("clips", "questions", "parse_rate", "next_step_accuracy", "current_step_accuracy",
              "steps_outside_task", "question_accuracy")  # fmt: skip
    assert {k: over_http[k] for k in scores} == {k: in_process[k] for k in scores}
    assert over_http["clips"] >= 8 and over_http["failures"] == in_process["failures"] == []

    def answers(side: str) -> dict[str, str]:
        rows = (tmp_path / side / "predictions.jsonl").read_text().splitlines()
        return {row["record_id"]: row["answer"] for row in map(json.loads, rows)}

    assert answers("url") == answers("local")
    print("eval over HTTP:", {k: over_http[k] for k in scores})


async def test_lavia_serve_attached_to_the_server_guides_a_demo_video(
    served: ModelServer, demo_video: tuple[Path, dict[str, Any]]
) -> None:
    """lavia serve with --engine-url and the frame size the served model was trained on:
    a demo video streamed over WebRTC gets guidance that follows its ground truth."""
    video, truth = demo_video
    engine = open_engine(served.url, api_model=served.model_id, api_key_env="")
    live = LiveServer(make_settings(), engine, frame_max_side=frame_max_side(EMBEDDED))
    await live.start("127.0.0.1", 0)
    try:
        events: list[dict[str, Any]] = []
        await stream_to_server(live.url, str(video), task="demo_oil_change", on_event=events.append)
        announced = [e["current_index"] for e in events if e["type"] == "guidance"]
        steps = sorted(span["step"] for span in truth["spans"])
        assert announced == sorted(announced), announced  # the video's order, never undone
        assert len(set(announced)) >= len(steps) - 2, (announced, steps)
        assert not [e for e in events if e["type"] == "error"]
        await wait_for(lambda: not live.sessions, 15, "the session closes with the client")
    finally:
        await live.stop()
        await engine.aclose()


async def test_the_command_serves_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lavia_live.cli", "model-server", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        found = re.search(r"listening on (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert found and found[2] != "0", line
        async with aiohttp.ClientSession() as http:
            async with http.get(found[1] + "/models") as response:
                assert [m["id"] for m in (await response.json())["data"]] == ["embedded"]
            async with http.get(found[1].removesuffix("/v1") + "/health") as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (await process.stdout.read()).decode().strip() == "LaViA model server stopped"
    assert "Traceback" not in (await process.stderr.read()).decode()
