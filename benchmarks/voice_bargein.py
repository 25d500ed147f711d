"""Barge-in stop time: the person talks over a long spoken answer → the voice stops.

    python benchmarks/voice_bargein.py [--interruptions 25] [--seed 7]

A real ``lavia serve`` (``LiveServer``: WebRTC, the Silero VAD, eSpeak NG, the embedded
faster-whisper ``tiny.en``) in this process, and an aiortc client on loopback (the voice
tests' ``MicClient``) that streams a rendered demo video and a paced 48 kHz microphone
track, and receives the assistant's voice. The model is a stand-in that streams a long
answer at once (:class:`LongAnswerEngine`): the model is not what is measured, and a quick
answer keeps each round short. Each round, once the answer has been playing at the client
for a random 0.2-1.5 s with seconds of it left, the client speaks a short eSpeak question
over it, from its first voiced sample; the server hears it, stops the voice, and answers the
question with the next long answer, which the next round interrupts.

Spans, on the one clock client and server share (``time.monotonic``):

- detect: the first voiced packet leaves the client → the server interrupts the speaker
  (RTP, aiortc's audio jitter buffer, which holds 4 packets (80 ms) before it releases one,
  decoding, resampling, the Silero VAD reaching ``listening.vad_threshold``);
- drain: → the last voiced frame of the assistant reaches the client (what was already
  sent: the frame being paced out, Opus, RTP, the client's jitter buffer, 80 ms again);
- stop time: detect + drain, what the person hears. Target: p95 ≤ 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import av
from _loopback import use_loopback_only_ice
from _media import VIDEO_CLOCK, VIDEO_TIME_BASE, demo_video
from _server import fmt, machine, percentile, run_benchmark, table
from aiortc import MediaStreamTrack

from lavia_live.config import Settings
from lavia_live.contract.prompt import Prompt
from lavia_live.engines.base import GenerationOptions
from lavia_live.server.app import LiveServer
from tests.lavia_live.server.conftest import wait_for
from tests.lavia_live.server.test_voice_live import MicClient, barge_in, spoken

VIDEO_SEED = 101  # the demo video whose first frame the camera shows
log = logging.getLogger("voice_bargein")

INTERRUPTION = "Wait, what about the oil filter?"
LONG_ANSWER = (
    "First warm the engine for a minute so that the old oil flows freely. "
    "Then switch it off and set the drain pan under the drain plug. "
    "Loosen the drain plug with the ratchet and let the oil run out completely. "
    "Clean the plug, fit a new washer and tighten it by hand before the final quarter turn. "
    "Pour the new oil in slowly through the filler opening and check the dipstick. "
    "Finally, run the engine again and look under it for any drops of oil."
)


class StillCamera(MediaStreamTrack):
    """A camera that shows one frame of a video, ``fps`` times a second, for as long as it
    is read (aiortc's ``MediaPlayer`` cannot loop a file without its timestamps going back,
    which the server's jitter buffer drops, and a run outlasts the demo video)."""

    kind = "video"

    def __init__(self, video: Path, fps: int = 5) -> None:
        super().__init__()
        with av.open(str(video)) as container:
            self.picture = next(container.decode(video=0)).reformat(format="yuv420p")
        self.step = VIDEO_CLOCK // fps
        self.pts = 0
        self.start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        else:
            self.pts += self.step
            await asyncio.sleep(max(0.0, self.start + self.pts / VIDEO_CLOCK - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(self.picture.to_ndarray(), format="yuv420p")
        frame.pts = self.pts
        frame.time_base = VIDEO_TIME_BASE
        return frame


def still_client(server: LiveServer, video: Path) -> MicClient:
    """A ``MicClient`` whose camera is a :class:`StillCamera` of ``video``."""
    client = MicClient(server, video)
    client.player.video.stop()
    client.player = SimpleNamespace(video=StillCamera(video))  # type: ignore[assignment]
    return client


class LongAnswerEngine:
    """Answers every question with :data:`LONG_ANSWER`, streamed word by word at once;
    guidance requests get no answer (nothing is announced, so nothing else is spoken)."""

    name = "long-answer"
    max_concurrency = 1

    async def stream(
        self, prompt: Prompt, frames_jpeg: Sequence[bytes], options: GenerationOptions
    ) -> AsyncIterator[str]:
        if prompt.kind != "question":
            return
        for word in LONG_ANSWER.split(" "):
            yield word + " "
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        return None


async def main_async(args: argparse.Namespace) -> None:
    use_loopback_only_ice()
    video = await asyncio.to_thread(demo_video, VIDEO_SEED, fps=5)
    rng = random.Random(args.seed)
    settings = Settings.model_validate({"listening": {"partial_interval_s": 0}})
    server = LiveServer(settings, LongAnswerEngine())
    await server.start("127.0.0.1", 0)
    question = await asyncio.to_thread(spoken, INTERRUPTION)
    detect: list[float] = []
    drain: list[float] = []
    stops: list[float] = []
    client = still_client(server, video.path)
    try:
        await client.connect()
        speaker = server.sessions[client.sid].speaker
        assert speaker is not None, "the client receives the voice"
        interrupted: list[float] = []
        interrupt = speaker.interrupt

        def timed_interrupt() -> bool:
            interrupted.append(time.monotonic())
            return interrupt()

        speaker.interrupt = timed_interrupt  # type: ignore[method-assign]
        client.send({"type": "question", "text": "How do I change the oil?", "id": "q0"})
        answer_id = "q0"
        for round_ in range(args.interruptions):
            finals = len(client.transcripts(final=True))
            heard_frames = rng.randint(10, 75)  # 0.2-1.5 s of the answer first
            stop = await barge_in(client, question, answer_id, heard_frames)
            spoke_from = client.said_from
            assert spoke_from is not None
            cut = [t for t in interrupted if t >= spoke_from]
            if cut:
                detect.append(cut[0] - spoke_from)
                drain.append(stop - detect[-1])
            stops.append(stop)
            log.info("round %d: stop %.0f ms", round_ + 1, stop * 1000)
            await wait_for(lambda n=finals: len(client.transcripts(final=True)) > n, 60, "a final")
            final = client.transcripts(final=True)[-1]
            if final["text"]:
                answer_id = final["id"]
            else:  # nothing recognised, nothing asked: ask in writing to go on
                answer_id = f"q{round_ + 1}"
                client.send({"type": "question", "text": "And then?", "id": answer_id})
        interruptions = speaker.interruptions
    finally:
        await client.close()
        await server.stop()

    def row(name: str, span: str, values: list[float]) -> list[str]:
        ms = [v * 1000 for v in values]
        return [
            name,
            span,
            str(len(ms)),
            fmt(percentile(ms, 50), 0),
            fmt(percentile(ms, 95), 0),
            fmt(max(ms) if ms else None, 0),
        ]

    rows = [
        row("detect", "first voiced packet sent → the server interrupts", detect),
        row("drain", "→ the last voiced frame of the voice reaches the client", drain),
        row("**stop time**", "first voiced packet sent → last voiced frame received", stops),
    ]
    print(
        f"## Barge-in stop time: {len(stops)} interruptions over WebRTC on loopback "
        "(eSpeak NG voice, Silero VAD, default listening settings)\n"
    )
    print(table(["span", "from → to", "n", "p50 ms", "p95 ms", "max ms"], rows))
    print(
        f"\n{interruptions} of {len(stops)} rounds cut the voice mid-sentence (the others "
        f"fell between two sentences). Target: p95 ≤ 300 ms. {machine()}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interruptions", type=int, default=25, help="rounds (at least 20)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the random offsets")
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
