"""Skipping pictures nobody needs: H.264 and HEVC pictures read from their NAL unit headers.

In H.264 and HEVC with B-frames, some pictures (most B-frames) are non-reference: no other
picture is predicted from them, so a decoder that never sees one decodes every other
picture to exactly the same pixels. Before decoding, the file's packets are demuxed once
without decoding (cheap) to collect every frame's pts; in presentation order they go
through the same :class:`TimestampSampler`, which gives exactly the frames the
decode-everything path keeps. The decoding pass then withholds the packets of
non-reference pictures that are not kept (the NAL unit headers say which: H.264
``nal_ref_idc == 0``; HEVC sub-layer non-reference types in the highest temporal layer).
The frames not decoded are still offered to the sampler, in presentation order, so every
decision and timestamp is the decode-everything path's. Anything this does not cover
(Annex B streams, other codecs, packets without pts, timestamps that are not a bounded
reordering of presentation order, edit lists that drop frames, a stream not starting at an
IDR picture, a malformed packet) decodes every frame, as before.

:func:`plan_skipping` makes the :class:`SkipPlan` (which also gives the IDR positions that
:mod:`training.data.ranges` cuts a file at); :mod:`training.data.clips` follows it.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
from av.packet import Packet
from av.video.stream import VideoStream

from lavia_live.contract.sampling import SamplingSpec, TimestampSampler
from lavia_live.errors import MediaError
from training.data.video import open_video

# The scan for skippable pictures gives up (decoding everything) after this many packets
# without one: a stream without B-frames has none, and reading it all would be wasted.
_SCAN_GIVE_UP = 600
# Reorder depth assumed when PyAV does not say (H.264's and HEVC's largest picture buffer).
_MAX_REORDER = 16


class Picture(NamedTuple):
    """What the NAL unit headers of one packet say about its picture."""

    disposable: bool  # no later picture of its temporal layer is predicted from it
    layer: int  # temporal sub-layer (HEVC TemporalId; 0 in H.264)
    idr: bool  # an IDR picture: decoding can start here


def nal_headers(data: memoryview, length_size: int, header_size: int) -> list[bytes] | None:
    """The header of each NAL unit of a length-prefixed packet; None when malformed."""
    headers: list[bytes] = []
    at, end = 0, len(data)
    while at < end:
        start = at + length_size
        size = int.from_bytes(data[at:start], "big")
        if size < header_size or start + size > end:
            return None
        headers.append(bytes(data[start : start + header_size]))
        at = start + size
    return headers


# H.264 NAL unit types: slice of a non-IDR / IDR picture, and those that carry nothing a
# later picture needs (SEI, access unit delimiter, filler). Any other type (parameter sets,
# data partitions, extensions) makes the packet one to decode.
_H264_SLICE, _H264_IDR = 1, 5
_H264_INERT = frozenset({6, 9, 12})


def h264_picture(headers: Sequence[bytes]) -> Picture | None:
    slices: list[tuple[int, int]] = []  # (nal_unit_type, nal_ref_idc)
    inert = True
    for (byte,) in headers:
        if byte & 0x80:  # forbidden_zero_bit
            return None
        kind = byte & 0x1F
        if kind in (_H264_SLICE, _H264_IDR):
            slices.append((kind, (byte >> 5) & 3))
        elif kind not in _H264_INERT:
            inert = False
    if not slices:
        return None
    disposable = inert and all(kind == _H264_SLICE and ref == 0 for kind, ref in slices)
    return Picture(disposable, 0, any(kind == _H264_IDR for kind, _ in slices))


# HEVC: sub-layer non-reference picture types (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N and
# the reserved RSV_VCL_N10/12/14), IDR types, and inert non-VCL types (access unit
# delimiter, filler, prefix and suffix SEI).
_HEVC_SUBLAYER_NONREF = frozenset({0, 2, 4, 6, 8, 10, 12, 14})
_HEVC_IDR = frozenset({19, 20})
_HEVC_INERT = frozenset({35, 38, 39, 40})


def hevc_picture(headers: Sequence[bytes]) -> Picture | None:
    kinds: list[int] = []
    layers: set[int] = set()
    inert = True
    for first, second in headers:
        if first & 0x80 or (first & 1) or (second >> 3):  # forbidden bit, nuh_layer_id > 0
            return None
        kind, temporal_id = (first >> 1) & 0x3F, (second & 7) - 1
        if temporal_id < 0:
            return None
        if kind < 32:  # a slice
            kinds.append(kind)
            layers.add(temporal_id)
        elif kind not in _HEVC_INERT:
            inert = False
    if not kinds or len(layers) != 1:
        return None
    disposable = inert and all(kind in _HEVC_SUBLAYER_NONREF for kind in kinds)
    return Picture(disposable, layers.pop(), any(kind in _HEVC_IDR for kind in kinds))


class Syntax(NamedTuple):
    """How to read one codec's length-prefixed NAL units (AVCC / hvcC in mp4, mkv, mov)."""

    header_size: int  # bytes of a NAL unit header
    length_byte: int  # byte of the decoder configuration record holding lengthSizeMinusOne
    picture: Callable[[Sequence[bytes]], Picture | None]


SYNTAXES = {"h264": Syntax(1, 4, h264_picture), "hevc": Syntax(2, 21, hevc_picture)}


@dataclass(frozen=True)
class SkipPlan:
    """Which packets the decoder need not see: disposable pictures the sampler drops.

    Only the bitstream says what is disposable: the NAL unit headers the decoder itself
    goes by. The container's flag (PyAV's ``Packet.is_disposable``, FFmpeg's
    AV_PKT_FLAG_DISPOSABLE, which the mov demuxer takes from an ``sdtp`` box) is not used:
    files written by FFmpeg and x264 leave it unset, and a wrong one would change the
    pixels of later frames without a word."""

    syntax: Syntax
    length_size: int
    top_layer: int  # the highest temporal layer: its disposable pictures are never used
    time_base: Fraction
    order: array[int]  # every frame's pts in presentation order (8 bytes a frame)
    keep: frozenset[int] = field(repr=False)  # pts of the frames the sampler keeps
    skips: bool = True  # False: the stream has no disposable pictures; all are decoded
    # For decoding ranges in parallel: every packet's pts in decode order, and the decode
    # positions of the IDR pictures (where a decoder can start from nothing).
    decode_order: array[int] = field(default_factory=lambda: array("q"), repr=False)
    idr: tuple[int, ...] = ()

    def skippable(self, packet: Packet[Any]) -> bool:
        if not self.skips or packet.pts is None or packet.pts in self.keep:
            return False
        picture = _read_picture(packet, self.syntax, self.length_size)
        return picture is not None and picture.disposable and picture.layer == self.top_layer


def _read_picture(packet: Packet[Any], syntax: Syntax, length_size: int) -> Picture | None:
    headers = nal_headers(memoryview(packet), length_size, syntax.header_size)
    return None if headers is None else syntax.picture(headers)


def plan_skipping(
    path: Path, stream: VideoStream, spec: SamplingSpec, *, whole: bool = False
) -> tuple[SkipPlan | None, str]:
    """Demux (no decoding) the stream's packets into a :class:`SkipPlan`: the sampler run
    over every pts in presentation order. ``(None, why)`` when every frame must be decoded
    in one pass. With ``whole``, a stream without disposable pictures still gets a plan
    (``skips`` False, ``why`` says so): its IDR positions let ranges decode in parallel.
    """
    codec = stream.codec_context
    syntax = SYNTAXES.get(codec.name)
    if syntax is None:
        return None, f"codec {codec.name} (only H.264 and HEVC pictures are skipped)"
    config = codec.extradata or b""
    if len(config) <= syntax.length_byte or config[0] != 1:
        return None, "NAL units not length-prefixed (Annex B)"
    length_size = (config[syntax.length_byte] & 3) + 1
    if length_size == 3 or stream.time_base is None:
        return None, "invalid NAL length size" if length_size == 3 else "no time base"
    depth = getattr(codec, "reorder_depth", None)  # the decoder's has_b_frames (newer PyAV)
    depth = depth if isinstance(depth, int) else _MAX_REORDER
    scanned = _scan(path, stream.index, syntax, length_size, depth, whole=whole)
    if isinstance(scanned, str):
        return None, scanned
    sampler = TimestampSampler(spec)
    time_base = stream.time_base
    keep = frozenset(pts for pts in scanned.order if sampler.offer(pts, time_base) is not None)
    plan = SkipPlan(
        syntax,
        length_size,
        scanned.top_layer,
        time_base,
        scanned.order,
        keep,
        skips=scanned.disposable,
        decode_order=scanned.decode_order,
        idr=tuple(scanned.idr),
    )
    return plan, "" if scanned.disposable else _NO_DISPOSABLE


_NO_DISPOSABLE = "no non-reference pictures"


class _Scanned(NamedTuple):
    order: array[int]  # pts in presentation order
    decode_order: array[int]  # pts in decode (file) order
    idr: list[int]  # decode positions of IDR pictures
    top_layer: int
    disposable: bool  # whether any picture is disposable


def _scan(
    path: Path, index: int, syntax: Syntax, length_size: int, depth: int, *, whole: bool
) -> _Scanned | str:
    """Every pts in presentation and in decode order, the IDR positions and the top temporal
    layer, by demuxing stream ``index`` of ``path`` without decoding; or what rules skipping
    out. Without ``whole``, gives up early on a stream with no disposable pictures.

    The pts go through a reorder buffer of the decoder's depth, as the decoded frames do:
    they must come out strictly increasing (else timestamps jump back, repeat, or are
    reordered further than the decoder will, and its output order is not theirs)."""
    buffer = ReorderBuffer(depth)
    top_layer, disposable, packets = 0, False, 0
    decode_order: array[int] = array("q")
    idr: list[int] = []
    try:
        with open_video(path) as container:
            for packet in container.demux(container.streams[index]):
                if not packet.size:
                    continue
                packets += 1
                if packet.pts is None:
                    return "a packet without pts"
                if getattr(packet, "is_discard", False):
                    return "the container drops some frames (edit list)"
                picture = _read_picture(packet, syntax, length_size)
                if picture is None:
                    return f"packet {packets} is not a picture's length-prefixed NAL units"
                if packets == 1 and not picture.idr:
                    return "the stream does not start with an IDR picture"
                if picture.idr:
                    idr.append(packets - 1)
                decode_order.append(packet.pts)
                top_layer = max(top_layer, picture.layer)
                disposable = disposable or picture.disposable
                if not disposable and not whole and packets >= _SCAN_GIVE_UP:
                    return f"{_NO_DISPOSABLE} in the first {packets} packets"
                if not buffer.push(packet.pts):
                    return _OUT_OF_ORDER
    except (av.FFmpegError, MediaError) as exc:
        return f"demuxing failed: {exc}"
    if not buffer.drain():
        return _OUT_OF_ORDER
    if not disposable and not whole:
        return _NO_DISPOSABLE
    return _Scanned(buffer.order, decode_order, idr, top_layer, disposable)


_OUT_OF_ORDER = "timestamps that repeat, jump back or are reordered beyond the decoder's depth"


class ReorderBuffer:
    """A decoder's reorder buffer of ``depth`` pictures, on timestamps in decode order:
    ``order`` receives them in the decoder's output order, which must be presentation
    order (strictly increasing); :meth:`push` and :meth:`drain` say whether it is."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.order: array[int] = array("q")
        self._pending: list[int] = []  # a heap

    def push(self, pts: int) -> bool:
        heapq.heappush(self._pending, pts)
        return len(self._pending) <= self.depth or self._emit(heapq.heappop(self._pending))

    def drain(self) -> bool:
        while self._pending:
            if not self._emit(heapq.heappop(self._pending)):
                return False
        return True

    def _emit(self, pts: int) -> bool:
        if self.order and pts <= self.order[-1]:
            return False
        self.order.append(pts)
        return True
