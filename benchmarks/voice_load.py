"""Recognition under load: 1, 4 and 8 sessions whose questions end at the same moment.

    python benchmarks/voice_load.py [--rounds 6] [--sessions 1,4,8]

The server's one shared recognition worker (``RecognitionWorker`` with the embedded
faster-whisper ``tiny.en``, as ``lavia serve`` starts it) in this process. In each round,
every session submits the final of one eSpeak-spoken question (2-3 s at 16 kHz, a different
question per session) at once, as the listener does at the end of an utterance; the latency
of each is from that moment to its transcript. The session counts alternate round by round,
so the machine's load moves them alike. Reported: p50/p95 over all utterances of a count,
the ratio against one session, the worker's throughput and whether any was refused (the
queue holds ``listening.queue_size``, 8 by default).

The worker transcribes one utterance at a time (each encoded as ``listening.encoder_window_s``
of audio): with N at once the last waits for N-1 others, and the ratio grows about as
(N+1)/2 at p50 and N at p95.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import numpy as np
import numpy.typing as npt
import voice_turn
from _server import fmt, machine, percentile, run_benchmark, table

from lavia_live.config.settings import ListeningSettings
from lavia_live.server.recognizer import RecognitionWorker, RecognizerBusy, whisper_transcriber
from lavia_live.speech.asr import SAMPLE_RATE
from lavia_live.speech.synthesis import resample
from lavia_live.speech.tts import synthesize

log = logging.getLogger("voice_load")

QUESTIONS = (
    *voice_turn.QUESTIONS,
    "Is the oil pan in the right place?",
    "When do I put the filler cap back?",
    "How do I check the level with the dipstick?",
)


def utterance(text: str) -> npt.NDArray[np.float32]:
    """``text`` spoken by eSpeak NG, 16 kHz float, with the 200 ms pads the VAD keeps."""
    pcm = resample(synthesize(text), SAMPLE_RATE).astype(np.float32) / 32768.0
    pad = np.zeros(SAMPLE_RATE // 5, dtype=np.float32)
    return np.concatenate([pad, pcm, pad])


async def one_round(
    worker: RecognitionWorker, audio: list[npt.NDArray[np.float32]]
) -> tuple[list[float], int, float]:
    """Latencies of ``len(audio)`` finals submitted at once, the refused count, wall time."""
    started = time.perf_counter()
    futures = []
    refused = 0
    for i, samples in enumerate(audio):
        try:
            futures.append((worker.submit(f"session-{i}", samples), time.perf_counter()))
        except RecognizerBusy:
            refused += 1
    latencies: list[float] = []

    async def wait(future: asyncio.Future[object] | None, sent: float) -> None:
        assert future is not None
        await future
        latencies.append(time.perf_counter() - sent)

    await asyncio.wait_for(
        asyncio.gather(*(wait(f, t) for f, t in futures)),  # type: ignore[arg-type]
        timeout=300,
    )
    return latencies, refused, time.perf_counter() - started


async def main_async(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.sessions.split(",")]
    settings = ListeningSettings()
    audio = [utterance(q) for q in QUESTIONS]
    transcribe, load = whisper_transcriber(settings)
    worker = RecognitionWorker(
        transcribe, queue_size=settings.queue_size, timeout_s=settings.timeout_s, load=load
    )
    await worker.start()
    latencies: dict[int, list[float]] = {n: [] for n in counts}
    refused = dict.fromkeys(counts, 0)
    walls: dict[int, float] = dict.fromkeys(counts, 0.0)
    try:
        await one_round(worker, audio[:1])  # warm-up
        for r in range(args.rounds):
            for n in counts:
                batch = [audio[(r + i) % len(audio)] for i in range(n)]
                got, no, wall = await one_round(worker, batch)
                latencies[n] += got
                refused[n] += no
                walls[n] += wall
                log.info("round %d, %d sessions: p50 %.2f s", r + 1, n, percentile(got, 50))
    finally:
        await worker.aclose()
    base = percentile(latencies[counts[0]], 50)
    rows = []
    for n in counts:
        p50, p95 = percentile(latencies[n], 50), percentile(latencies[n], 95)
        done = len(latencies[n])
        rows.append(
            [
                n,
                done,
                fmt(p50 * 1000, 0),
                fmt(p95 * 1000, 0),
                f"{p50 / base:.2f}x",
                f"{p95 / base:.2f}x",
                fmt(done / walls[n], 2),
                refused[n],
            ]
        )
    seconds = [a.shape[0] / SAMPLE_RATE for a in audio]
    print(
        f"## Recognition under load: finals of {min(seconds):.1f}-{max(seconds):.1f} s "
        f"questions ending at once, {args.rounds} rounds, one shared worker "
        f"({settings.model}, {settings.compute_type}, beam {settings.beam_size})\n"
    )
    headers = [
        "sessions",
        "utterances",
        "p50 ms",
        "p95 ms",
        f"p50 vs {counts[0]}",
        f"p95 vs {counts[0]} p50",
        "utterances/s",
        "refused",
    ]
    print(table(headers, rows))
    print(f"\n{machine()}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per session count")
    parser.add_argument("--sessions", default="1,4,8", help="session counts, the first is 1")
    run_benchmark(parser, main_async)


if __name__ == "__main__":
    main()
