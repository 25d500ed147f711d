"""The browser client end to end: headless Chromium, the real server, the embedded model.

Chromium's fake camera plays a demo video rendered here (as .y4m, looped in real time); the
page connects over WebRTC on loopback and must show the step the video is at. The demo
source button streams the shipped demo video instead. Every wait is on a page or server
condition with a generous deadline; screenshots go to ``$LAVIA_TEST_ARTIFACTS/browser/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Request, Route
from playwright.async_api import TimeoutError as PlaywrightTimeout

from lavia_live.contract.tasks import TaskLibrary
from lavia_live.resources import shipped_path
from tests.lavia_live.server.browser import (
    artifacts_dir,
    chromium,
    guidance_log,
    wait_for_page,
    wait_until,
    write_y4m,
)
from tests.lavia_live.server.conftest import make_settings, running_server
from training.demo.render import DemoSpec, DemoTruth, render_demo_video

DEMO_TASK = "demo_oil_change"
SEED = 300_007  # no mistake; steps 1-4 last 10.2, 9.6, 7.4 and 8.8 s
FAKE_CAMERA_FPS = 5  # what the page asks a camera for
LAG_S = 12.0
"""Longest time from a step's start in the video to the page showing it: sampling (1/s), the
model (on 2 loaded cores), the tracker's confirmation of a new step."""

STATE = "document.getElementById('connection').dataset.state"
GUIDANCE = "document.getElementById('guidance').dataset"


@pytest.fixture(scope="module")
def steps() -> tuple[str, ...]:
    return TaskLibrary.load().require(DEMO_TASK).steps


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoTruth]:
    """Demo video SEED rendered at the camera's frame rate, as a .y4m, and its truth."""
    folder = tmp_path_factory.mktemp("camera")
    task = TaskLibrary.load().require(DEMO_TASK)
    spec = DemoSpec(fps=FAKE_CAMERA_FPS, mistake_rate=0.0, narration=False)
    truth = render_demo_video(task, SEED, folder, spec)
    assert not truth.mistakes
    return write_y4m(folder / truth.video, folder / "camera.y4m"), truth


def shipped_truth() -> DemoTruth:
    path = shipped_path("data/demo/demo_oil_change.truth.json")
    return DemoTruth.from_json(json.loads(path.read_text()))


def steps_in_progress(truth: DemoTruth, video_s: float, lag_s: float = LAG_S) -> set[int]:
    """Steps the (looping) video showed between ``video_s - lag_s`` and ``video_s + 0.5``."""
    seen = set()
    t = max(0.0, video_s - lag_s)
    while t <= video_s + 0.5:
        frame = round(t * truth.fps) % truth.n_frames
        seen.add(truth.step_at(frame))
        t += 0.1
    return seen


def check_timeline(log: list[dict[str, Any]], truth: DemoTruth, t0_ms: float | None) -> None:
    """Every step the page showed as current was in progress in the video shortly before
    (video time from the demo video's position, else from ``t0_ms`` on the page clock), and
    every next step shown comes after it."""
    shown = [e for e in log if e["current"] != ""]
    assert shown, f"the page showed no guidance: {log}"
    for entry in shown:
        if entry["demoTime"] is not None:
            video_s = entry["demoTime"]
        else:
            assert t0_ms is not None
            video_s = (entry["t"] - t0_ms) / 1000
        expected = steps_in_progress(truth, video_s)
        assert int(entry["current"]) in expected, (
            f"at video time {video_s:.1f} s the page showed step {int(entry['current']) + 1} "
            f"({entry['currentText']!r}); the video had steps {sorted(s + 1 for s in expected)} "
            f"in progress in the {LAG_S:g} s before. Timeline: {log}"
        )
        if entry["next"] != "":
            assert int(entry["next"]) > int(entry["current"]), f"next before current: {log}"


def save_timeline(test: str, log: list[dict[str, Any]], t0_ms: float | None) -> None:
    """What the page showed when, as a test artifact (seconds since Start if known)."""
    rows = [{**e, "s": None if t0_ms is None else (e["t"] - t0_ms) / 1000} for e in log]
    (artifacts_dir(test) / "timeline.json").write_text(json.dumps(rows, indent=1))


async def open_page(page: Page, url: str) -> None:
    await page.goto(url)
    await wait_for_page(page, "!document.getElementById('start').disabled")


async def shot(page: Page, test: str, name: str) -> None:
    await page.screenshot(path=str(artifacts_dir(test) / f"{name}.png"), full_page=True)


async def sessions_end(server: Any) -> None:
    await wait_until(lambda: not server.sessions, "the server to close every session")


async def test_camera_guidance_follows_the_video(
    live_server: Any, camera_video: tuple[Path, DemoTruth], steps: tuple[str, ...], tmp_path: Path
) -> None:
    y4m, truth = camera_video
    name = "camera"
    async with chromium(tmp_path / "profile", fake_video=y4m) as context:
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await open_page(page, live_server.url)
        await page.select_option("#task", DEMO_TASK)
        assert await page.input_value("#source") != "demo", "the default source is the camera"
        # Keyboard only: focus Start and press Enter. The fake camera starts from the
        # video's first frame when the page opens it, right after this.
        await page.focus("#start")
        t0 = await page.evaluate("performance.now()")
        await page.keyboard.press("Enter")
        await wait_for_page(page, f"{STATE} === 'live'")
        assert await page.get_attribute("#stop", "disabled") is None
        await shot(page, name, "1-live")
        # The page has followed the video to step 3 or later, and shows its next step.
        following = (
            f"(g => g.currentIndex !== '' && +g.currentIndex >= 2"
            f" && g.nextIndex === String(+g.currentIndex + 1))({GUIDANCE})"
        )
        try:
            await wait_for_page(page, following)
        except PlaywrightTimeout:
            await shot(page, name, "2-timeout")
            log = await guidance_log(page)
            save_timeline(name, log, t0)
            status = await page.text_content("#status")
            raise AssertionError(
                f"step 3 or later never shown; status {status!r}; timeline {log}"
            ) from None
        current = int(await page.get_attribute("#guidance", "data-current-index") or -1)
        assert await page.text_content("#current-step") == steps[current]
        assert await page.text_content("#next-step") == steps[current + 1]
        items = await page.eval_on_selector_all(
            "#checklist li", "els => els.map(e => e.dataset.state)"
        )
        assert items[current] == "current", items
        assert items[current + 1 :] == ["upcoming"] * (len(steps) - current - 1), items
        status = await page.text_content("#status")
        assert status and "received" in status, status
        await shot(page, name, "2-following")
        log = await guidance_log(page)
        save_timeline(name, log, t0)
        check_timeline(log, truth, t0)
        assert not problems, problems
        assert len(live_server.sessions) == 1
        await page.click("#stop")
        await wait_for_page(page, f"{STATE} === 'stopped'")
    await sessions_end(live_server)


async def test_demo_button_streams_the_demo_video(
    live_server: Any, steps: tuple[str, ...], tmp_path: Path
) -> None:
    name = "demo-source"
    async with chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await open_page(page, live_server.url)
        await page.select_option("#task", "honda_gx160_oil_change")
        await page.click("#demo")
        assert await page.input_value("#task") == DEMO_TASK, "the demo source selects its task"
        assert await page.input_value("#source") == "demo"
        await wait_for_page(page, f"{STATE} === 'live'")
        # What is sent is the demo video drawn on a canvas, shown in the preview.
        await wait_for_page(page, "document.getElementById('preview').videoWidth > 0")
        await wait_for_page(page, "document.getElementById('demo-video').currentTime > 1")
        await wait_for_page(page, f"{GUIDANCE}.currentIndex !== ''")
        shown = await page.text_content("#current-step")
        assert shown in steps
        await shot(page, name, "guidance")
        # Phone width: one column, nothing wider than the screen.
        await page.set_viewport_size({"width": 390, "height": 844})
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await shot(page, name, "phone")
        await page.set_viewport_size({"width": 1280, "height": 900})
        # A typed question, sent with Enter; the answer streams in.
        await page.fill("#question", "What should I do now?")
        await page.press("#question", "Enter")
        await wait_for_page(page, "document.querySelector('#answers li[data-final]')")
        answer = await page.text_content("#answers li[data-final] .a")
        assert answer and answer.strip() and not answer.startswith("Could not answer"), answer
        assert await page.input_value("#question") == ""
        await shot(page, name, "answer")
        log = await guidance_log(page)
        save_timeline(name, log, None)
        check_timeline(log, shipped_truth(), None)
        assert not problems, problems
    await sessions_end(live_server)


async def test_reconnects_after_the_connection_drops(live_server: Any, tmp_path: Path) -> None:
    name = "reconnect"
    async with chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        await open_page(page, live_server.url)
        await page.click("#demo")
        first = await wait_for_page(
            page, f"{STATE} === 'live' && document.getElementById('connection').dataset.session"
        )
        await wait_until(lambda: set(live_server.sessions) == {first}, "the first session")
        # The data channel closes under the page, as when the network drops.
        await page.evaluate("window.laviaLive.dropConnection()")
        await wait_for_page(page, f"{STATE} === 'reconnecting'")
        await shot(page, name, "reconnecting")
        second = await wait_for_page(
            page,
            f"{STATE} === 'live' && document.getElementById('connection').dataset.session !== "
            f"{json.dumps(first)} && document.getElementById('connection').dataset.session",
        )
        assert await page.input_value("#task") == DEMO_TASK
        await wait_until(lambda: set(live_server.sessions) == {second}, "only the new session")
        await wait_for_page(page, f"{GUIDANCE}.currentIndex !== ''")
        await shot(page, name, "live-again")
        # Stop ends the retries and the session.
        await page.click("#stop")
        await wait_for_page(page, f"{STATE} === 'stopped'")
        await sessions_end(live_server)


async def test_refused_offer_is_explained(live_server: Any, tmp_path: Path) -> None:
    """The server's 404 for an unknown task reaches the person in plain words, and the page
    stops instead of retrying."""
    offers: list[str] = []

    async def unknown_task(route: Route, request: Request) -> None:
        body = json.loads(request.post_data or "{}")
        body["task"] = "no_such_task"
        offers.append(request.url)
        await route.continue_(post_data=json.dumps(body))

    async with chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.route("**/offer", unknown_task)
        await open_page(page, live_server.url)
        await page.click("#start")
        await wait_for_page(
            page, f"{STATE} === 'stopped' && !document.getElementById('error').hidden"
        )
        message = await page.text_content("#error-text")
        assert message and "does not know the task" in message, message
        assert len(offers) == 1, "a refused task is not retried"
        assert await page.get_attribute("#start", "disabled") is None
        await shot(page, "refused", "unknown-task")
    assert not live_server.sessions


async def test_token_is_asked_for_and_sent(tmp_path: Path) -> None:
    """With a shared token configured the page asks for it, explains a 401 in plain words,
    keeps the token in the browser and sends it with the offer."""
    async with running_server(make_settings(token="open sesame")) as server:
        async with chromium(tmp_path / "profile") as context:
            page = await context.new_page()
            await open_page(page, server.url)
            assert await page.is_visible("#token")
            await page.click("#start")
            await wait_for_page(
                page, f"{STATE} === 'stopped' && !document.getElementById('error').hidden"
            )
            message = await page.text_content("#error-text")
            assert message and "access token" in message, message
            assert await page.evaluate("document.activeElement.id") == "token"
            await shot(page, "token", "refused")
            await page.fill("#token", "open sesame")
            await page.press("#token", "Enter")  # submits the form: Start
            await wait_for_page(page, f"{STATE} === 'live'")
            assert await page.is_hidden("#error")
            assert len(server.sessions) == 1
            await page.click("#stop")
            await page.reload()
            await wait_for_page(page, "!document.getElementById('start').disabled")
            assert await page.input_value("#token") == "open sesame", "kept in localStorage"
        await wait_until(lambda: not server.sessions, "the server to close every session")
