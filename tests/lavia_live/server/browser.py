"""Headless Chromium driving the browser client, for the end-to-end tests of ``client/``.

Debian's ``chromium`` is launched through Playwright (``launch_persistent_context`` with a
fresh profile; ``playwright install`` is never needed). A ``.y4m`` file stands in for the
camera (Chromium loops it in real time). The page records every change of the guidance it
shows, with the page's clock, so a test can compare what was shown when against the
video's ground truth.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from playwright.async_api import BrowserContext, Page, async_playwright

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
DEADLINE_S = 60.0
"""How long a test waits for any page or server condition (the test machine has 2 cores)."""

_RECORDER = """
(() => {
  window.__guidance = [];
  const record = () => {
    const g = document.getElementById("guidance");
    if (!g) return;
    const demo = document.getElementById("demo-video");
    const entry = {
      t: performance.now(),
      demoTime: demo && demo.currentSrc ? demo.currentTime : null,
      current: g.dataset.currentIndex ?? "",
      next: g.dataset.nextIndex ?? "",
      currentText: document.getElementById("current-step").textContent,
      nextText: document.getElementById("next-step").textContent,
    };
    const last = window.__guidance[window.__guidance.length - 1];
    if (!last || last.current !== entry.current || last.next !== entry.next) {
      window.__guidance.push(entry);
    }
  };
  document.addEventListener("DOMContentLoaded", () => {
    const g = document.getElementById("guidance");
    new MutationObserver(record).observe(g, {
      subtree: true, childList: true, characterData: true, attributes: true,
    });
  });
})();
"""


def artifacts_dir(name: str) -> Path:
    """Folder for one test's screenshots: ``$LAVIA_TEST_ARTIFACTS/browser/NAME``."""
    base = Path(os.environ.get("LAVIA_TEST_ARTIFACTS") or ROOT / "runs" / "test-artifacts")
    folder = base / "browser" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_y4m(source: Path, target: Path) -> Path:
    """Decode ``source`` and write every frame to ``target`` as YUV4MPEG2 (yuv420p), at the
    source's frame rate: what Chromium's fake camera reads."""
    with av.open(str(source)) as src, av.open(str(target), "w", format="yuv4mpegpipe") as dst:
        video = src.streams.video[0]
        rate = Fraction(video.average_rate or 30)
        out = dst.add_stream("rawvideo", rate=rate)
        out.width = video.codec_context.width
        out.height = video.codec_context.height
        out.pix_fmt = "yuv420p"
        for index, frame in enumerate(src.decode(video)):
            picture = frame.reformat(format="yuv420p")
            picture.pts = index
            picture.time_base = 1 / rate
            dst.mux(out.encode(picture))
        dst.mux(out.encode(None))
    return target


@asynccontextmanager
async def chromium(
    profile: Path,
    *,
    fake_video: Path | None = None,
    fake_audio: Path | None = None,
    viewport: tuple[int, int] = (1280, 900),
) -> AsyncIterator[BrowserContext]:
    """Headless Chromium with a fake camera (``fake_video``, else Chromium's test pattern)
    and a fake microphone (``fake_audio``, a WAV played once from when the page opens it,
    else Chromium's beeps) that are allowed without asking, WebRTC over loopback, and
    autoplay."""
    if not CHROMIUM.is_file():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium")
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
    ]
    if fake_video is not None:
        args.append(f"--use-file-for-fake-video-capture={fake_video}")
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}%noloop")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            user_data_dir=str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=args,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        await context.add_init_script(_RECORDER)
        try:
            yield context
        finally:
            await context.close()


class PageProblems:
    """Uncaught exceptions and console errors of a page (a test asserts there are none)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Wait for a condition of the server (polled every 50 ms) or fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_page(page: Page, expression: str, arg: Any = None) -> Any:
    """Wait (up to :data:`DEADLINE_S`) until the JavaScript ``expression`` is truthy."""
    handle = await page.wait_for_function(expression, arg=arg, timeout=DEADLINE_S * 1000)
    return await handle.json_value()


async def guidance_log(page: Page) -> list[dict[str, Any]]:
    """Every guidance change the page showed: ``t`` (ms, page clock), ``current``/``next``
    (0-based step index as text, '' when none), the texts, and ``demoTime`` (the demo
    video's position in seconds when the demo source plays, else None)."""
    log: list[dict[str, Any]] = await page.evaluate("window.__guidance")
    return log
