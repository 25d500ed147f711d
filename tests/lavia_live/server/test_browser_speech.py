"""The page's voice in headless Chromium: it receives the assistant's audio track and its
``speech`` events, and its controls (mute, voice, rate, the browser's own voice) reach the
server. Every wait is on a page or server condition with a deadline."""

from __future__ import annotations

import asyncio
import re
import wave
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import Page

from lavia_live.config import Settings
from lavia_live.config.settings import SpeechSettings
from lavia_live.speech.synthesis import resample
from lavia_live.speech.tts import synthesize
from tests.lavia_live.server.browser import DEADLINE_S, chromium, wait_for_page, wait_until
from tests.lavia_live.server.conftest import running_server
from tests.lavia_live.server.test_browser import STATE, open_page, sessions_end, shot

SPOKEN = "window.laviaLive.speechLog().filter(e => e.type === 'speech' && e.state === 'end')"


async def page_value(page: Page, expression: str, what: str) -> Any:
    """Evaluate ``expression`` (it may be async) until it is truthy; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not (value := await page.evaluate(expression)):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S:g} s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


async def start_demo(page: Page, server: Any) -> Any:
    """Press *Try the demo video*; the server's session once the page is live."""
    await page.click("#demo")
    sid = await wait_for_page(
        page, f"{STATE} === 'live' && document.getElementById('connection').dataset.session"
    )
    return server.sessions[sid]


async def test_the_page_speaks_and_its_voice_controls_reach_the_server(
    live_server: Any, tmp_path: Path
) -> None:
    name = "voice"
    async with chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await open_page(page, live_server.url)
        assert await page.is_visible("#speech-mute")
        assert await page.get_attribute("#speech-mute", "aria-pressed") == "false"
        session = await start_demo(page, live_server)
        speaker = session.speaker
        assert speaker is not None, "the page's offer receives audio"
        # The server's voices are offered; the audio element plays the received track.
        voices = await page.eval_on_selector_all(
            "#speech-voice option", "os => os.map(o => o.value)"
        )
        assert "en-us" in voices and "en-gb-x-rp" in voices, voices
        await wait_for_page(page, "document.getElementById('speech-audio').srcObject !== null")
        # Guidance is spoken: speech events arrive and the received audio carries energy.
        spoken = await page_value(page, f"{SPOKEN}.length > 0 && {SPOKEN}", "a spoken sentence")
        assert spoken[0]["kind"] == "guidance" and spoken[0]["text"].startswith(("Next", "Now"))
        stats = await page_value(
            page,
            "window.laviaLive.audioStats().then(s => s && s.totalAudioEnergy > 0 && s)",
            "audio energy received",
        )
        assert stats["packetsReceived"] > 10, stats
        await shot(page, name, "speaking")
        # Voice and rate by keyboard: the server's speaker follows.
        await page.focus("#speech-voice")
        await page.select_option("#speech-voice", "en-gb-x-rp")
        await wait_until(lambda: speaker.voice == "en-gb-x-rp", "the chosen voice")
        await page.focus("#speech-rate")
        for _ in range(4):
            await page.keyboard.press("ArrowRight")
        await wait_until(lambda: speaker.rate_wpm == 200, "the chosen rate")
        assert await page.text_content("#speech-rate-value") == "200"
        # Mute (keyboard): the server stops speaking; a question is answered in text only.
        await page.focus("#speech-mute")
        await page.keyboard.press("Enter")
        assert await page.get_attribute("#speech-mute", "aria-pressed") == "true"
        await wait_until(lambda: speaker.muted and speaker.idle, "the server's voice muted")
        frames = speaker.track.speech_frames_sent
        assert await page.evaluate("document.getElementById('speech-audio').muted")
        await page.fill("#question", "Where does the old oil go?")
        await page.press("#question", "Enter")
        await wait_for_page(page, "document.querySelector('#answers li[data-final]')")
        assert speaker.idle and speaker.track.speech_frames_sent == frames
        log = await page.evaluate("window.laviaLive.speechLog()")
        assert not [e for e in log if e.get("kind") == "answer"], log
        # The browser's own voice: the server stays muted and the page speaks the answer.
        await page.click("#speech-mute")  # unmute
        await wait_until(lambda: not speaker.muted, "unmuted")
        await page.focus("#speech-browser")
        await page.keyboard.press("Space")
        await wait_until(lambda: speaker.muted, "the server muted for the browser's voice")
        await page.fill("#question", "What comes next?")
        await page.press("#question", "Enter")
        await wait_for_page(
            page, "document.querySelectorAll('#answers li[data-final]').length >= 2"
        )
        answer = (await page.text_content("#answers li[data-final] .a") or "").strip()
        local = await page_value(
            page,
            "window.laviaLive.speechLog().filter(e => e.type === 'browser').map(e => e.text)",
            "the browser speaking",
        )
        assert answer in local, (answer, local)
        assert speaker.track.speech_frames_sent == frames
        await shot(page, name, "browser-voice")
        # The settings are kept in this browser.
        await page.click("#stop")
        await page.reload()
        await wait_for_page(page, "!document.getElementById('start').disabled")
        assert await page.is_checked("#speech-browser")
        assert await page.input_value("#speech-rate") == "200"
        assert not problems, problems
    await sessions_end(live_server)


def spoken_wav(text: str, path: Path) -> Path:
    """``text`` in eSpeak's voice as a 48 kHz 16-bit mono WAV, with silence around it."""
    pause = np.zeros(48000, dtype=np.int16)
    pcm = np.concatenate([pause, resample(synthesize(text), 48000), pause, pause])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(pcm.tobytes())
    return path


QUESTION = "How do I remove the drain plug from the engine oil pan?"
KEYWORDS = {"remove", "drain", "plug", "engine", "oil", "pan"}


async def test_the_page_asks_a_spoken_question_with_its_microphone(
    live_server: Any, tmp_path: Path
) -> None:
    name = "voice-question"
    wav = spoken_wav(QUESTION, tmp_path / "q.wav")
    async with chromium(tmp_path / "profile", fake_audio=wav) as context:
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await open_page(page, live_server.url)
        assert await page.get_attribute("#mic", "aria-pressed") == "false"
        session = await start_demo(page, live_server)
        listener = session.listener
        assert listener is not None, "the page's offer sends audio"
        assert session.speaker is not None, "and receives the voice on the same transceiver"
        # The demo source sends no audio of its own: nothing is heard before the Mic button.
        await wait_until(lambda: session.assistant.frames_received > 10, "video flowing")
        assert listener.frames_received == 0
        await page.click("#mic")  # the microphone opens asynchronously
        await wait_for_page(page, "document.getElementById('mic').ariaPressed === 'true'")
        assert await page.is_visible("#mic-level")
        await wait_until(lambda: listener.frames_received > 50, "microphone audio")
        final = await page_value(
            page,
            "window.laviaLive.transcripts().find(t => t.final && t.text)",
            "a final transcript",
        )
        heard = set(re.findall(r"[a-z]+", final["text"].lower()))
        assert len(heard & KEYWORDS) >= 3, final
        # The question and its answer are shown in the answers list, and the answer is spoken.
        entry = "document.querySelector('#answers li[data-final]')"
        await wait_for_page(page, entry)
        assert (await page.text_content("#answers li[data-final] .q") or "").strip() == final[
            "text"
        ]
        await page_value(
            page,
            f"{SPOKEN}.some(e => e.id === {final['id']!r})",
            "the answer spoken",
        )
        await shot(page, name, "answered")
        # Mic off: the page stops sending; the level meter goes away.
        await page.click("#mic")
        assert await page.get_attribute("#mic", "aria-pressed") == "false"
        assert not await page.is_visible("#mic-level")
        assert not problems, problems
        await page.click("#stop")
    await sessions_end(live_server)


async def test_push_to_talk_with_the_space_bar_interrupts_and_sends_at_release(
    tmp_path: Path,
) -> None:
    name = "push-to-talk"
    wav = spoken_wav(QUESTION, tmp_path / "q.wav")  # 1 s, the question, 2 s of silence
    with wave.open(str(wav)) as w:
        wav_s = w.getnframes() / w.getframerate()
    # spoken slowly, so the press lands mid-sentence even when the machine is busy
    slow = Settings().model_copy(update={"speech": SpeechSettings(rate_wpm=100)})
    async with (
        running_server(slow) as server,
        chromium(tmp_path / "profile", fake_audio=wav) as context,
    ):
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await open_page(page, server.url)
        await page.select_option("#mic-mode", "push-to-talk")
        session = await start_demo(page, server)
        speaker, listener = session.speaker, session.listener
        assert speaker is not None and listener is not None
        # the page takes the server's configured rate until the person moves the slider
        await page_value(
            page,
            "document.getElementById('speech-rate-value').textContent === '100'",
            "the server's speaking rate shown",
        )
        assert speaker.rate_wpm == 100
        assert (await page.text_content("#mic") or "").strip() == "Hold to talk"
        # Space typed in the question box is a space, not a press.
        await page.focus("#question")
        await page.keyboard.down("Space")
        await page.keyboard.up("Space")
        assert await page.input_value("#question") == " "
        assert await page.get_attribute("#mic", "aria-pressed") == "false"
        await page.fill("#question", "")
        await page.focus("#mic")
        # The guidance is being spoken: holding Space stops it at once. Spoken means playing,
        # not only queued: a press before the first frame went out drops the sentence
        # unheard, and nothing was cut.
        await wait_until(
            lambda: speaker.track.speaking and speaker.track.queued_s > 2.0,
            "the assistant speaking",
        )
        await page.keyboard.down("Space")
        await wait_until(lambda: speaker.interruptions == 1, "the voice cut by the press")
        cut = await page_value(
            page,
            "window.laviaLive.speechLog().find(e => e.state === 'end' && e.interrupted)",
            "an interrupted sentence",
        )
        assert cut["kind"] == "guidance", cut
        assert await page.get_attribute("#mic", "aria-pressed") == "true"
        await page_value(page, "window.laviaLive.micSending()", "the microphone sent")
        # Held through the question and well over a second of silence after it (the fake
        # microphone starts when it is first opened): a pause ends nothing while held.
        await wait_until(
            lambda: listener.frames_received * 0.02 > wav_s - 0.5, "the question heard"
        )
        assert not await page.evaluate("window.laviaLive.transcripts().some(t => t.final)")
        await shot(page, name, "held")
        await page.keyboard.up("Space")
        await page_value(page, "!window.laviaLive.micSending()", "the microphone detached")
        assert await page.get_attribute("#mic", "aria-pressed") == "false"
        final = await page_value(
            page,
            "window.laviaLive.transcripts().find(t => t.final && t.text)",
            "a final transcript",
        )
        assert final["ended"] == "released", final
        heard = set(re.findall(r"[a-z]+", final["text"].lower()))
        assert len(heard & KEYWORDS) >= 3, final
        await page_value(page, f"{SPOKEN}.some(e => e.id === {final['id']!r})", "the answer spoken")
        await shot(page, name, "answered")
        assert not problems, problems
        await page.click("#stop")
        await sessions_end(server)
