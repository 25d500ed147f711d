"""Voice turn latency: the end of the person's question → the first answer audio they hear.

    python benchmarks/voice_turn.py [--turns 20]

A real ``lavia serve`` with its embedded models on this machine (the model with one torch
thread, faster-whisper ``tiny.en``, the Silero VAD, eSpeak NG) in this process, and an
aiortc client on loopback (the voice tests' ``MicClient``) that streams a rendered demo
video and speaks eSpeak questions on a paced 48 kHz microphone track. Each turn starts once
the previous answer is complete (its voice may still be playing: the question interrupts
it). Turns where guidance was spoken before the answer are listed apart (the answer waited
for that sentence to end).

Spans, on the one clock client and server share (``time.monotonic``), from the last voiced
sample of the question leaving the client:

- end-pointing: → the server ends the utterance (transport, ``listening.min_silence_ms``
  of silence, the VAD); the final transcript's ``latency_ms`` taken off the next span;
- recognition: → the final ``transcript`` (queue and faster-whisper, its ``latency_ms``);
- model: → the ``answer`` delta that completes the first sentence reaches the client (the
  question queued, the model's first tokens);
- synthesis: → that sentence's ``speech`` start (eSpeak NG, resampling, the next 20 ms
  frame);
- transport: → the RTP packet carrying its first voiced frame arrives at the client (Opus,
  RTP, loopback);
- turn: the sum, end of speech → first answer audio packet at the client. Target: p50 ≤
  800 ms. The turn as this client plays it (after aiortc's jitter buffer, 4 packets of
  prefetch; a browser's adapts) is listed too.

Both ways of answering run in one process, one after the other: the answer started on the
early transcript and held back until the utterance's end is confirmed
(``listening.answer_early``, the default), and the answer started at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from _loopback import use_loopback_only_ice
from _media import demo_video
from _server import fmt, machine, percentile, run_benchmark, table
from voice_bargein import still_client

from lavia_live.config import Settings
from lavia_live.engines.base import Engine
from lavia_live.engines.factory import frame_max_side, open_engine
from lavia_live.server.app import LiveServer
from lavia_live.speech.sentences import SentenceSplitter
from tests.lavia_live.server.conftest import wait_for
from tests.lavia_live.server.test_voice_live import VOICED, MicClient, from_the_first_sound, spoken

VIDEO_SEED = 101  # the demo video whose first frame the camera shows
log = logging.getLogger("voice_turn")

QUESTIONS = (
    "What do I do next?",
    "Where does the old oil go?",
    "How tight should the drain plug be?",
    "Which tool do I need for the drain plug?",
    "How much oil goes into the engine?",
)


@dataclass
class Turn:
    endpointing: float
    recognition: float
    model: float
    synthesis: float
    transport: float
    played: float  # the first voiced frame out of the client's jitter buffer, from the packet
    after_guidance: bool

    @property
    def total(self) -> float:
        return self.endpointing + self.recognition + self.model + self.synthesis + self.transport


def voiced_only(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """``pcm`` without the silence before and after the speech."""
    pcm = from_the_first_sound(pcm)
    loud = np.flatnonzero(np.abs(pcm) >= VOICED)
    return pcm[: int(loud[-1]) + 1 if loud.size else 0]


async def one_turn(client: MicClient, question: npt.NDArray[np.int16]) -> Turn | None:
    finals = len(client.transcripts(final=True))
    client.say(question, pause_s=0)
    await wait_for(lambda: client.said_at is not None, 30, "the question sent")
    ended = client.said_at
    assert ended is not None
    await wait_for(lambda: len(client.transcripts(final=True)) > finals, 60, "a final")
    (heard_at, final) = client.timed("transcript", final=True)[-1]
    if not final["text"]:
        log.warning("nothing recognised")
        return None
    uid = final["id"]
    await wait_for(lambda: client.timed("speech", id=uid, state="start"), 120, "spoken")
    started_at = client.timed("speech", id=uid, state="start")[0][0]
    splitter = SentenceSplitter(first_clause=True)  # as the speaker splits answers
    sentence_at = None
    for at, event in client.timed("answer", id=uid):
        if event["final"] or splitter.feed(str(event["delta"] or "")):
            sentence_at = at
            break
    assert sentence_at is not None
    await wait_for(lambda: client.voiced_since(started_at) > 0, 20, "heard")
    # Its audio follows its text; the packet may overtake the data channel's speech event.
    first_voiced = min(
        at for at, peak in client.heard_packets if at >= sentence_at and peak >= VOICED
    )
    first_played = min(at for at, peak in client.heard if at >= sentence_at and peak >= VOICED)
    recognition = float(final["latency_ms"]) / 1000
    guidance = [t for t, _ in client.timed("speech", kind="guidance", state="start")]
    await wait_for(
        lambda: any(e["final"] for _, e in client.timed("answer", id=uid)), 120, "answered"
    )
    return Turn(
        endpointing=heard_at - ended - recognition,
        recognition=recognition,
        model=sentence_at - heard_at,
        synthesis=started_at - sentence_at,
        transport=first_voiced - started_at,
        played=first_played - first_voiced,
        after_guidance=any(ended < t < started_at for t in guidance),
    )


async def turns_of(
    engine: Engine, video: Path, questions: list[npt.NDArray[np.int16]], early: bool, count: int
) -> tuple[list[Turn], int]:
    """``count`` turns with a server of its own; also how many were not recognised."""
    settings = Settings.model_validate(
        {"listening": {"partial_interval_s": 0, "answer_early": early}}
    )
    server = LiveServer(settings, engine, frame_max_side=frame_max_side("embedded"))
    await server.start("127.0.0.1", 0)
    turns: list[Turn] = []
    unheard = 0
    client = still_client(server, video)
    try:
        await client.connect()
        for i in range(count):
            turn = await one_turn(client, questions[i % len(questions)])
            if turn is None:
                unheard += 1
                continue
            turns.append(turn)
            log.info("turn %d (answer early: %s): %.0f ms", i + 1, early, turn.total * 1000)
    finally:
        await client.close()
        await server.stop()
    return turns, unheard


async def main_async(args: argparse.Namespace) -> None:
    use_loopback_only_ice()
    video = await asyncio.to_thread(demo_video, VIDEO_SEED, fps=5)
    engine = await asyncio.to_thread(open_engine, "embedded", cpu_threads=1)
    questions = [voiced_only(await asyncio.to_thread(spoken, q)) for q in QUESTIONS]
    runs = {}
    try:
        for early in (True, False):
            runs[early] = await turns_of(engine, video.path, questions, early, args.turns)
    finally:
        await engine.aclose()

    def row(answer: str, name: str, span: str, values: list[float]) -> list[str]:
        ms = [v * 1000 for v in values]
        p50, p95 = percentile(ms, 50), percentile(ms, 95)
        return [answer, name, span, str(len(ms)), fmt(p50, 0), fmt(p95, 0)]

    rows = []
    listening = Settings().listening
    for early, (turns, _) in runs.items():
        way = "early, held" if early else "at the end"
        clean = [t for t in turns if not t.after_guidance]
        rows += [
            row(
                way,
                "end-pointing",
                "end of speech → utterance ended",
                [t.endpointing for t in clean],
            ),
            row(way, "recognition", "→ final transcript", [t.recognition for t in clean]),
            row(way, "model", "→ first sentence of the answer", [t.model for t in clean]),
            row(way, "synthesis", "→ its first frame sent", [t.synthesis for t in clean]),
            row(way, "transport", "→ its packet at the client", [t.transport for t in clean]),
            row(
                way,
                "**turn**",
                "end of speech → first answer audio packet",
                [t.total for t in clean],
            ),
            row(
                way,
                "turn, played",
                "→ out of aiortc's jitter buffer",
                [t.total + t.played for t in clean],
            ),
            row(
                way,
                "turn, after guidance",
                "(guidance was spoken first)",
                [t.total for t in turns if t.after_guidance],
            ),
        ]
    print(
        f"## Voice turn latency: {args.turns} turns each way over WebRTC on loopback, embedded "
        f"models (min_silence_ms {listening.min_silence_ms}, encoder_window_s "
        f"{listening.encoder_window_s})\n"
    )
    print(table(["answer started", "span", "from → to", "n", "p50 ms", "p95 ms"], rows))
    unheard = {("early" if early else "at the end"): n for early, (_, n) in runs.items()}
    print(f"\nTurns not recognised: {unheard}. Target: p50 ≤ 800 ms. {machine()}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20, help="questions (at least 20)")
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
