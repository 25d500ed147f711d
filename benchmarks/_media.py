"""Demo videos and the VP8 streams the live benchmarks send, cached in benchmarks/.cache/live.

A demo video comes from the project's renderer (``training.demo.render``: the demo task
the embedded model knows, with its ground truth). A :class:`Vp8Stream` is that video
encoded once by aiortc's own ``Vp8Encoder`` (VP8 is aiortc's default video codec; same
settings as a live aiortc sender: realtime deadline, CBR, one keyframe at the start) and
stored frame by frame as the bytes a receiver's jitter buffer hands to its decoder. The
benchmarks' clients send these frames as they are (no encoding in the client), so every
run sends exactly the same stream, and the bare-decode baseline decodes exactly what the
server decodes.
"""

from __future__ import annotations

import json
import logging
import statistics
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

CACHE = Path(__file__).resolve().parent / ".cache" / "live"
VIDEO_CLOCK = 90_000  # RTP video clock rate: aiortc frames carry pts in 1/90000 s
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
DEMO_TASK = "demo_oil_change"
_MAGIC = b"LVP8S1\n"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoVideo:
    path: Path
    truth: dict[str, Any]

    @property
    def fps(self) -> int:
        return int(self.truth["fps"])

    def step_starts(self) -> dict[int, int]:
        """Step index -> the frame at which it starts (first span of each step)."""
        starts: dict[int, int] = {}
        for span in self.truth["spans"]:
            starts.setdefault(int(span["step"]), int(span["start_frame"]))
        return starts


def demo_video(seed: int, *, width: int = 640, height: int = 480, fps: int = 30) -> DemoVideo:
    """A rendered demo video without narration or mistakes (rendered once, then cached)."""
    from lavia_live.contract.tasks import TaskLibrary
    from training.demo.render import DemoSpec, render_demo_video

    folder = CACHE / f"demo_{width}x{height}_{fps}fps"
    truth_path = folder / f"demo_{seed:05d}.truth.json"
    if not truth_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log.info("rendering demo video seed %d at %dx%d %d fps (once)", seed, width, height, fps)
        task = TaskLibrary.load().require(DEMO_TASK)
        spec = DemoSpec(width=width, height=height, fps=fps, narration=False, mistake_rate=0.0)
        render_demo_video(task, seed, folder, spec)
    return DemoVideo(folder / f"demo_{seed:05d}.mp4", json.loads(truth_path.read_text()))


@dataclass(frozen=True)
class Vp8Stream:
    """A VP8 stream, one entry per frame, frame ``i`` presented at ``i / fps`` seconds."""

    path: Path
    fps: int
    width: int
    height: int
    kbps: int
    frames: list[bytes]
    encode_ms_p50: float  # aiortc's Vp8Encoder time per frame when the stream was made

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def pts_step(self) -> int:
        return VIDEO_CLOCK // self.fps

    def packet(self, index: int) -> av.Packet:
        """Frame ``index`` (looping over the stream) with its pts in 1/90000 s."""
        packet = av.Packet(self.frames[index % len(self.frames)])
        packet.pts = index * self.pts_step
        packet.time_base = VIDEO_TIME_BASE
        return packet

    def packets(self, count: int | None = None) -> Iterator[av.Packet]:
        for i in range(len(self.frames) if count is None else count):
            yield self.packet(i)

    @classmethod
    def load(cls, path: Path) -> Vp8Stream:
        with path.open("rb") as f:
            if f.readline() != _MAGIC:
                raise ValueError(f"{path}: not a cached VP8 stream")
            header = json.loads(f.readline())
            frames = []
            for _ in range(header["count"]):
                (size,) = struct.unpack(">I", f.read(4))
                frames.append(f.read(size))
        return cls(
            path,
            header["fps"],
            header["width"],
            header["height"],
            header["kbps"],
            frames,
            header["encode_ms_p50"],
        )


def vp8_stream(video: DemoVideo, kbps: int = 1000) -> Vp8Stream:
    """``video`` encoded by aiortc's VP8 encoder at ``kbps`` (encoded once, then cached)."""
    path = video.path.with_name(f"{video.path.stem}_{kbps}kbps.vp8s")
    if not path.is_file():
        log.info("encoding %s to VP8 at %d kbps (once)", video.path.name, kbps)
        with av.open(str(video.path)) as container:
            _encode_vp8(container.decode(video=0), video.fps, kbps, path)
    return Vp8Stream.load(path)


def camera_stream(fps: int, kbps: int = 1000, seconds: int = 60) -> Vp8Stream:
    """Camera-like content at 640x480 (a textured scene panning, textured objects moving
    on their own: ``clip_extraction.py``'s generator), which costs a decoder more than the
    flat-shaded demo scene; encoded as :func:`vp8_stream` does (once, then cached)."""
    path = CACHE / f"camera_640x480_{fps}fps_{seconds}s_{kbps}kbps.vp8s"
    if not path.is_file():
        from clip_extraction import _frames  # the camera-like scene of that benchmark

        log.info(
            "generating %d s of camera-like video at %d fps, VP8 %d kbps (once)", seconds, fps, kbps
        )
        frames = (
            av.VideoFrame.from_ndarray(planes, format="yuv420p")
            for planes in _frames(640, 480, seconds * fps, fps)
        )
        _encode_vp8(frames, fps, kbps, path)
    return Vp8Stream.load(path)


CONTENTS = ("demo", "camera")


def stream_for(content: str, fps: int, kbps: int, seed: int = 1) -> Vp8Stream:
    """The 640x480 VP8 stream of ``content`` (``demo`` or ``camera``) at ``fps``."""
    if content == "demo":
        return vp8_stream(demo_video(seed, width=640, height=480, fps=fps), kbps)
    if content == "camera":
        return camera_stream(fps, kbps)
    raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")


def _encode_vp8(frames: Iterable[av.VideoFrame], fps: int, kbps: int, path: Path) -> None:
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    encoder = Vp8Encoder()
    encoder.target_bitrate = kbps * 1000
    encoded: list[bytes] = []
    times: list[float] = []
    width = height = 0
    for i, frame in enumerate(frames):
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        width, height = frame.width, frame.height
        started = time.perf_counter()
        payloads, _ = encoder.encode(frame, force_keyframe=i == 0)
        times.append(time.perf_counter() - started)
        if not payloads:
            raise RuntimeError(f"{path.name}: the VP8 encoder gave nothing for frame {i}")
        encoded.append(b"".join(vp8_depayload(p) for p in payloads))
    header = {
        "fps": fps,
        "width": width,
        "height": height,
        "kbps": kbps,
        "count": len(encoded),
        "encode_ms_p50": round(statistics.median(times) * 1000, 3),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(_MAGIC)
        f.write(json.dumps(header).encode() + b"\n")
        for data in encoded:
            f.write(struct.pack(">I", len(data)))
            f.write(data)
    tmp.replace(path)
