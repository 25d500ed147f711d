"""Drawing the demo oil-change scene in simple shapes.

A grey engine block on a stand, a yellow filler cap on its filler neck, a drain plug at the
bottom, a dipstick tube with an orange ring. Each of the seven steps changes the scene in a
large, cumulative way (pan under the engine, cap beside it, ratchet on the plug, dark oil in
the pan, bottle pouring, dipstick out), so the steps survive downscaling to 112 px.

Everything that varies between videos (colours, layout, lighting, camera shake,
distractors) comes from the seed; everything that varies within a video comes from the
:class:`SceneState` and the time. The static layers (background, engine) are drawn once per
video and cached; a frame is a copy plus a dozen shapes.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

__all__ = [
    "CAP_OFF",
    "CHECK_LEVEL",
    "DRAIN",
    "LOOSEN_PLUG",
    "N_STEPS",
    "PAN_IN",
    "POUR",
    "REFIT_PLUG",
    "SceneConfig",
    "SceneState",
    "draw_scene",
]

PAN_IN, CAP_OFF, LOOSEN_PLUG, DRAIN, REFIT_PLUG, POUR, CHECK_LEVEL = range(7)
N_STEPS = 7

Rgb = tuple[int, int, int]
Point = tuple[float, float]

_OLD_OIL: Rgb = (36, 22, 10)
_NEW_OIL: Rgb = (228, 170, 36)
_STEEL: Rgb = (176, 180, 188)
_APPEARANCE_STREAM = 7001
_STAND = 40  # engine stand height, design units: room for the pan and the drain stream


@dataclass(frozen=True)
class SceneConfig:
    """What the drawing needs from the video spec; hashable so per-video assets are cached."""

    width: int
    height: int
    max_shake_px: float
    max_distractors: int


@dataclass(frozen=True)
class SceneState:
    """What is happening at one frame: the steps already done, the one in progress."""

    done: frozenset[int]
    step: int
    progress: float  # 0..1 within the current span
    time_s: float  # seconds since the start of the video; drives continuous motion


@dataclass(frozen=True)
class _Distractor:
    kind: int  # 0 circle, 1 square, 2 triangle
    colour: Rgb
    size: float
    x0: float
    y0: float
    vx: float
    vy: float


@dataclass(frozen=True)
class _Look:
    """Per-video appearance and layout, all in canvas pixels (frame plus shake margin)."""

    u: float  # pixels per design unit (the design is 320 x 240)
    margin: int
    floor_y: float
    ex0: float  # engine block left
    et: float  # engine block top
    eb: float  # engine block bottom
    pan_side: int
    wall: Rgb
    floor: Rgb
    engine: Rgb
    pan: Rgb
    cap: Rgb
    bottle: Rgb
    handle: Rgb
    skin: Rgb
    sleeve: Rgb
    brightness: float
    contrast: float
    gains: tuple[float, float, float]
    drift: float
    drift_period: float
    shake: float
    shake_freqs: tuple[float, ...]
    shake_phases: tuple[float, ...]
    distractors: tuple[_Distractor, ...]

    def p(self, x: float, y: float) -> Point:
        """A point in engine units (origin: engine block top-left) to canvas pixels."""
        return (self.ex0 + x * self.u, self.et + y * self.u)


def _hsv(h: float, s: float, v: float) -> Rgb:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(c: Rgb, k: float) -> Rgb:
    return (min(255, round(c[0] * k)), min(255, round(c[1] * k)), min(255, round(c[2] * k)))


def _make_look(seed: int, cfg: SceneConfig) -> _Look:
    rng = np.random.default_rng([seed, _APPEARANCE_STREAM])
    w, h = cfg.width, cfg.height
    u = min(w / 320.0, h / 240.0) * float(rng.uniform(1.25, 1.4))
    margin = math.ceil(cfg.max_shake_px) + 1 if cfg.max_shake_px > 0 else 0
    floor_y = margin + h * float(rng.uniform(0.84, 0.88))
    eb = floor_y - _STAND * u
    ex0 = margin + w * float(rng.uniform(0.42, 0.56)) - 55 * u
    grey = float(rng.uniform(95, 145))
    engine = tuple(int(np.clip(grey + rng.uniform(-10, 10), 0, 255)) for _ in range(3))
    skin_k = float(rng.uniform(0, 1))
    skin = tuple(
        round(a + (b - a) * skin_k) for a, b in zip((236, 198, 170), (120, 80, 55), strict=True)
    )
    n_distractors = int(rng.integers(0, cfg.max_distractors + 1)) if cfg.max_distractors else 0
    distractors = tuple(
        _Distractor(
            kind=int(rng.integers(0, 3)),
            colour=_hsv(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)),
            size=float(rng.uniform(6, 14)) * u,
            x0=margin + float(rng.uniform(0, w)),
            y0=margin + float(rng.uniform(0, h)),
            vx=float(rng.uniform(-20, 20)) * u * float(rng.random() < 0.6),
            vy=float(rng.uniform(-12, 12)) * u * float(rng.random() < 0.6),
        )
        for _ in range(n_distractors)
    )
    shake = float(rng.uniform(0, cfg.max_shake_px)) * float(rng.random() < 0.75)
    return _Look(
        u=u,
        margin=margin,
        floor_y=floor_y,
        ex0=ex0,
        et=eb - 70 * u,
        eb=eb,
        pan_side=1 if rng.random() < 0.5 else -1,
        wall=_hsv(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.72, 0.95)),
        floor=_hsv(rng.uniform(), rng.uniform(0.1, 0.4), rng.uniform(0.35, 0.55)),
        engine=(engine[0], engine[1], engine[2]),
        pan=_hsv(rng.uniform(), rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.9)),
        cap=(int(rng.integers(225, 256)), int(rng.integers(185, 216)), int(rng.integers(0, 41))),
        bottle=_hsv(rng.uniform(), rng.uniform(0.5, 0.9), rng.uniform(0.55, 0.95)),
        handle=_hsv(rng.choice([0.0, 0.6, 0.08, 0.33]), 0.85, float(rng.uniform(0.5, 0.9))),
        skin=(skin[0], skin[1], skin[2]),
        sleeve=_hsv(rng.uniform(), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8)),
        brightness=float(rng.uniform(-25, 20)),
        contrast=float(rng.uniform(0.85, 1.15)),
        gains=(float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.9, 1.1)), 1.0),
        drift=float(rng.uniform(0, 2.5)),
        drift_period=float(rng.uniform(10, 30)),
        shake=shake,
        shake_freqs=tuple(float(f) for f in rng.uniform([0.3, 2, 0.3, 2], [1.2, 5, 1.2, 5])),
        shake_phases=tuple(float(f) for f in rng.uniform(0, 2 * math.pi, 4)),
        distractors=distractors,
    )


def _background(look: _Look, cfg: SceneConfig, seed: int) -> Image.Image:
    rng = np.random.default_rng([seed, _APPEARANCE_STREAM + 1])
    size = (cfg.width + 2 * look.margin, cfg.height + 2 * look.margin)
    img = Image.new("RGB", size, look.wall)
    d = ImageDraw.Draw(img)
    u = look.u
    for _ in range(int(rng.integers(0, 3))):  # shelves, posters, windows: static wall detail
        x, y = rng.uniform(0, size[0]), rng.uniform(0, look.floor_y - 40 * u)
        bw, bh = rng.uniform(20, 60) * u, rng.uniform(6, 40) * u
        d.rectangle((x, y, x + bw, y + bh), fill=_shade(look.wall, float(rng.uniform(0.7, 1.1))))
    d.rectangle((0, look.floor_y, size[0], size[1]), fill=look.floor)
    d.rectangle((0, look.floor_y - 5 * u, size[0], look.floor_y), fill=_shade(look.wall, 0.75))
    return img


def _engine_sprite(look: _Look, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    u, p, dark = look.u, look.p, _shade(look.engine, 0.6)
    for lx in (8, 96):  # stand legs down to the floor
        d.rectangle((*p(lx, 60), p(lx + 6, 0)[0], look.floor_y), fill=dark)
    d.rounded_rectangle((*p(0, 0), *p(110, 70)), radius=6 * u, fill=look.engine, outline=dark)
    for fy in range(12, 60, 9):  # cylinder fins
        d.line((*p(6, fy), *p(40, fy)), fill=dark, width=max(1, round(2 * u)))
    d.ellipse((*p(58, 14), *p(96, 52)), fill=_shade(look.engine, 0.8), outline=dark)  # starter
    d.ellipse((*p(72, 28), *p(82, 38)), fill=dark)
    d.rectangle((*p(18, -10), *p(34, 0)), fill=dark)  # filler neck
    d.rectangle((*p(21, -10), *p(31, -7)), fill=(15, 15, 15))  # its opening
    d.rectangle((*p(88, -12), *p(96, 0)), fill=dark)  # dipstick tube
    d.rectangle((*p(69, 66), *p(79, 70)), fill=(20, 20, 20))  # drain hole
    box = layer.getbbox() or (0, 0, 1, 1)
    return layer.crop(box), (box[0], box[1])


@functools.lru_cache(maxsize=16)
def _assets(seed: int, cfg: SceneConfig) -> tuple[_Look, Image.Image, Image.Image, tuple[int, int]]:
    look = _make_look(seed, cfg)
    bg = _background(look, cfg, seed)
    sprite, pos = _engine_sprite(look, bg.size)
    return look, bg, sprite, pos


def _ease(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


def _phase(p: float, a: float, b: float) -> float:
    return _ease((p - a) / (b - a))


def _lerp(a: Point, b: Point, k: float) -> Point:
    return (a[0] + (b[0] - a[0]) * k, a[1] + (b[1] - a[1]) * k)


def _bar(a: Point, angle: float, length: float, width: float) -> list[Point]:
    """A bar from ``a`` at ``angle`` (radians, screen coordinates) as a polygon."""
    dx, dy = math.cos(angle), math.sin(angle)
    nx, ny = -dy * width / 2, dx * width / 2
    b = (a[0] + dx * length, a[1] + dy * length)
    return [
        (a[0] + nx, a[1] + ny),
        (b[0] + nx, b[1] + ny),
        (b[0] - nx, b[1] - ny),
        (a[0] - nx, a[1] - ny),
    ]


def _rotated(points: list[Point], origin: Point, angle: float) -> list[Point]:
    c, s = math.cos(angle), math.sin(angle)
    return [(origin[0] + x * c - y * s, origin[1] + x * s + y * c) for x, y in points]


def _arm(d: ImageDraw.ImageDraw, look: _Look, grip: Point, toward: Point) -> None:
    d.line((*grip, *toward), fill=look.sleeve, width=max(2, round(15 * look.u)))
    r = 9 * look.u
    d.ellipse((grip[0] - r, grip[1] - r, grip[0] + r, grip[1] + r), fill=look.skin)


def _draw_cap(d: ImageDraw.ImageDraw, look: _Look, centre: Point, twist: float) -> None:
    u, (x, y) = look.u, centre
    d.rounded_rectangle(_box(centre, 18 * u, 10 * u), radius=3 * u, fill=look.cap)
    for k in range(4):  # ridges, shifted to show the cap turning
        rx = x - 14 * u + ((k * 7 + twist * 7) % 28) * u
        d.line(
            (rx, y - 7 * u, rx, y + 7 * u), fill=_shade(look.cap, 0.7), width=max(1, round(2 * u))
        )


def _draw_stream(
    d: ImageDraw.ImageDraw, top: Point, bottom_y: float, colour: Rgb, width: float, t: float
) -> None:
    n, height = 6, bottom_y - top[1]
    wobble = [math.sin(t * 9 + i * 1.3) * width * 0.3 * i / n for i in range(n + 1)]
    pts = [(top[0] + wobble[i], top[1] + height * i / n) for i in range(n + 1)]
    d.line(pts, fill=colour, width=max(1, round(width)), joint="curve")
    r = width * 0.75
    for k in range(3):  # drops falling along the stream
        y = top[1] + ((t * 2.2 + k / 3) % 1.0) * height
        d.ellipse((top[0] - r, y - r, top[0] + r, y + r), fill=colour)


def _box(c: Point, rx: float, ry: float) -> tuple[float, float, float, float]:
    return (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)


def _draw_pan(d: ImageDraw.ImageDraw, look: _Look, cx: float, fill: float, spill: float) -> None:
    u, fy = look.u, look.floor_y
    if spill > 0:  # new oil overflowing onto the floor around the pan
        d.ellipse(_box((cx, fy + 2 * u), (44 + 30 * spill) * u, 6 * u), fill=_NEW_OIL)
    rim = [(cx - 44 * u, fy - 20 * u), (cx + 44 * u, fy - 20 * u)]
    d.polygon([*rim, (cx + 36 * u, fy), (cx - 36 * u, fy)], fill=look.pan)
    if fill > 0:
        top, half, bottom = fy - 3 * u - 15 * u * fill, 36 * u + 6 * u * fill, fy - 3 * u
        oil = [(cx - half, top), (cx + half, top), (cx + 33 * u, bottom), (cx - 33 * u, bottom)]
        d.polygon(oil, fill=_OLD_OIL)
    d.line(rim, fill=_shade(look.pan, 0.65), width=max(1, round(3 * u)))


@dataclass(frozen=True)
class _Plug:
    out: bool  # lying on the floor (between draining and refitting)
    y: float  # its centre while in (or backing out of) the engine


def _draw_oil(
    d: ImageDraw.ImageDraw, look: _Look, cfg: SceneConfig, s: SceneState, plug: _Plug
) -> None:
    """Pan (sliding in, filling), puddles, the drain streams and the drain plug."""
    u, step, prog, t = look.u, s.step, s.progress, s.time_s
    has_pan = PAN_IN in s.done or step == PAN_IN
    home = look.p(74, 0)[0]
    fill = 1.0 if DRAIN in s.done else _phase(prog, 0.05, 0.9) if step == DRAIN else 0.0
    spill = 0.0
    if plug.out and step == POUR:
        spill = _phase(prog, 0.2, 0.85)
    elif plug.out and POUR in s.done:
        spill = 1.0
    if has_pan:
        cx = home
        if step == PAN_IN:
            start = look.margin + cfg.width + 50 * u if look.pan_side > 0 else look.margin - 50 * u
            cx = start + (home - start) * _phase(prog, 0.0, 0.35)
        _draw_pan(d, look, cx, fill, spill)
        if step == PAN_IN:  # the hand stays on the pan for the whole step
            grip = (cx + look.pan_side * 44 * u, look.floor_y - 12 * u)
            _arm(d, look, grip, (grip[0] + look.pan_side * 90 * u, grip[1] + 40 * u))
    elif fill > 0:  # no pan: the old oil makes a puddle on the floor
        d.ellipse(_box((home, look.floor_y + 3 * u), 50 * u * fill, 6 * u), fill=_OLD_OIL)
    if plug.out:
        d.rectangle(_box((home + 56 * u, look.floor_y - 5 * u), 8 * u, 5 * u), fill=_STEEL)
    else:
        d.rectangle(_box((home, plug.y), 8 * u, 5 * u), fill=_STEEL)
    surface = look.floor_y - 3 * u - 15 * u * fill if has_pan else look.floor_y
    hole = look.p(74, 70)
    if step == DRAIN:
        _draw_stream(d, hole, surface, _OLD_OIL, 11 * u if prog < 0.8 else 4 * u, t)
    if plug.out and step == POUR and 0.15 < prog < 0.85:
        _draw_stream(d, hole, surface, _NEW_OIL, 8 * u, t)


def _draw_ratchet(d: ImageDraw.ImageDraw, look: _Look, s: SceneState, plug: _Plug) -> None:
    """The ratchet on the plug: handle left while loosening, right while tightening."""
    u, t = look.u, s.time_s
    loosen = s.step == LOOSEN_PLUG
    swing = 0.2 * math.sin(t * 2 * math.pi * 0.5)
    angle = math.pi - swing if loosen else swing
    socket = (look.p(74, 0)[0], plug.y)
    dx, dy = math.cos(angle), math.sin(angle)
    d.polygon(_bar(socket, angle, 66 * u, 14 * u), fill=_STEEL)
    d.polygon(
        _bar((socket[0] + dx * 38 * u, socket[1] + dy * 38 * u), angle, 28 * u, 20 * u),
        fill=look.handle,
    )
    d.ellipse(_box(socket, 10 * u, 10 * u), fill=_shade(_STEEL, 0.8))
    grip = (socket[0] + dx * 56 * u, socket[1] + dy * 56 * u)
    _arm(d, look, grip, (grip[0] + 40 * u, grip[1] + 90 * u))


def _draw_cap_state(d: ImageDraw.ImageDraw, look: _Look, s: SceneState) -> None:
    """The filler cap: on the neck, coming off, lying beside the engine, going back on."""
    u, prog = look.u, s.progress
    on_neck, rest = look.p(26, -12), (look.ex0 - 20 * u, look.floor_y + 1 * u)
    at, hand = on_neck, False
    if s.step == CAP_OFF:
        k = _phase(prog, 0.25, 0.4)
        x, y = _lerp(on_neck, rest, k)
        at = (x, y - 30 * u * math.sin(math.pi * k) - 3 * u * _phase(prog, 0.0, 0.25))
        hand = True  # every step keeps its hand in view until the step ends
    elif CAP_OFF in s.done:
        at = rest
        if s.step == CHECK_LEVEL:
            k = _phase(prog, 0.74, 0.9)
            x, y = _lerp(rest, on_neck, k)
            at = (x, y - 30 * u * math.sin(math.pi * k))
            hand = prog > 0.7
    _draw_cap(d, look, at, s.time_s * 3 if hand else 0.0)
    if hand:
        _arm(d, look, (at[0], at[1] - 4 * u), (at[0] - 50 * u, at[1] - 90 * u))


_BOTTLE = [(-5, 0), (5, 0), (5, 8), (14, 14), (14, 52), (-14, 52), (-14, 14), (-5, 8)]
_LABEL = [(-14, 26), (14, 26), (14, 40), (-14, 40)]


def _draw_bottle(d: ImageDraw.ImageDraw, look: _Look, s: SceneState) -> None:
    """The oil bottle tilting in from the upper left over the filler neck, pouring a golden
    stream (from the left, so it never covers the dipstick on the right)."""
    u, prog, t = look.u, s.progress, s.time_s
    home = look.p(26, -20)
    k = _phase(prog, 0.0, 0.15) * (1 - _phase(prog, 0.85, 1.0))
    tip = (home[0] - 70 * u * (1 - k), home[1] - 40 * u * (1 - k))
    angle = math.radians(20 + 80 * k + 4 * math.sin(t * 5) * k)
    if 0.15 < prog < 0.85:
        _draw_stream(d, tip, look.et - 10 * u, _NEW_OIL, 8 * u, t)
    b = 1.4 * u  # the bottle's own scale
    d.polygon(_rotated([(x * b, y * b) for x, y in _BOTTLE], tip, angle), fill=look.bottle)
    d.polygon(_rotated([(x * b, y * b) for x, y in _LABEL], tip, angle), fill=(238, 238, 230))
    grip = _rotated([(0.0, 44 * b)], tip, angle)[0]
    _arm(d, look, grip, (grip[0] - 70 * u, grip[1] - 80 * u))


def _draw_dipstick(d: ImageDraw.ImageDraw, look: _Look, s: SceneState) -> None:
    """The dipstick ring on its tube; while checking, pulled out and held level, pushed back."""
    u, prog = look.u, s.progress
    tube = look.p(92, -12)
    lift = turn = 0.0
    if s.step == CHECK_LEVEL:
        back = 1 - _phase(prog, 0.62, 0.72)
        lift, turn = _phase(prog, 0.0, 0.1) * back, _phase(prog, 0.06, 0.16) * back
    ring = _lerp((tube[0], tube[1] - 4 * u), (tube[0] + 6 * u, look.et - 30 * u), lift)
    width = max(2, round(9 * u))
    if lift > 0:  # straight down into the tube, turning to point left when held level
        angle = math.pi / 2 * (1 + turn) + 0.12 * turn * math.sin(s.time_s * 2.5)
        end = (ring[0] + math.cos(angle) * 56 * u, ring[1] + math.sin(angle) * 56 * u)
        if turn == 0:
            end = (ring[0], min(end[1], tube[1]))
        d.line((*ring, *end), fill=_STEEL, width=width)
        if turn > 0.5:  # the oil mark on its end
            d.line((*_lerp(ring, end, 0.75), *end), fill=_NEW_OIL, width=width)
    d.ellipse(_box(ring, 10 * u, 10 * u), outline=(240, 120, 20), width=max(2, round(5 * u)))
    if s.step == CHECK_LEVEL and prog < 0.72:
        _arm(d, look, ring, (ring[0] + 60 * u, ring[1] - 90 * u))


def _draw_dynamic(d: ImageDraw.ImageDraw, look: _Look, cfg: SceneConfig, s: SceneState) -> None:
    step, done, u = s.step, s.done, look.u
    # The plug is out from draining until it is refitted (or for good, if refitting is skipped).
    out = LOOSEN_PLUG in done and REFIT_PLUG not in done and step != REFIT_PLUG
    plug = _Plug(out=out and (step == DRAIN or DRAIN in done), y=look.p(0, 73)[1])
    if step == LOOSEN_PLUG:
        plug = _Plug(out=False, y=plug.y + 4 * u * _phase(s.progress, 0.75, 1.0))
    elif step == REFIT_PLUG:
        plug = _Plug(out=False, y=plug.y + 4 * u * (1 - _phase(s.progress, 0.0, 0.35)))
    _draw_oil(d, look, cfg, s, plug)
    if step in (LOOSEN_PLUG, REFIT_PLUG):
        _draw_ratchet(d, look, s, plug)
    _draw_cap_state(d, look, s)
    if step == POUR:
        _draw_bottle(d, look, s)
    _draw_dipstick(d, look, s)


def _reflect(x: float, lo: float, span: float) -> float:
    x = (x - lo) % (2 * span)
    return lo + (x if x <= span else 2 * span - x)


def _draw_distractors(d: ImageDraw.ImageDraw, look: _Look, cfg: SceneConfig, t: float) -> None:
    for dis in look.distractors:
        x = _reflect(dis.x0 + dis.vx * t, look.margin, cfg.width)
        y = _reflect(dis.y0 + dis.vy * t, look.margin, cfg.height)
        r = dis.size / 2
        if dis.kind == 0:
            d.ellipse((x - r, y - r, x + r, y + r), fill=dis.colour)
        elif dis.kind == 1:
            d.rectangle((x - r, y - r, x + r, y + r), fill=dis.colour)
        else:
            d.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=dis.colour)


@functools.lru_cache(maxsize=256)
def _lut(contrast: float, level: float, gains: tuple[float, float, float]) -> list[int]:
    """Brightness, contrast and colour balance as a per-channel lookup table for PIL."""
    base = (np.arange(256, dtype=np.float32) - 128.0) * contrast + 128.0 + level
    table = np.clip(base[None, :] * np.asarray(gains, np.float32)[:, None], 0, 255)
    return [int(v) for v in table.astype(np.uint8).reshape(-1).tolist()]


def _shake(look: _Look, t: float) -> tuple[int, int]:
    if look.shake <= 0:
        return 0, 0
    f, ph, tau = look.shake_freqs, look.shake_phases, 2 * math.pi
    dx = 0.7 * math.sin(tau * f[0] * t + ph[0]) + 0.3 * math.sin(tau * f[1] * t + ph[1])
    dy = 0.7 * math.sin(tau * f[2] * t + ph[2]) + 0.3 * math.sin(tau * f[3] * t + ph[3])
    clamp = look.margin
    return (
        max(-clamp, min(clamp, round(look.shake * dx))),
        max(-clamp, min(clamp, round(look.shake * dy))),
    )


def draw_scene(seed: int, cfg: SceneConfig, state: SceneState) -> npt.NDArray[np.uint8]:
    """Draw one frame: ``cfg.height x cfg.width x 3`` uint8 RGB. Deterministic."""
    look, bg, sprite, sprite_pos = _assets(seed, cfg)
    img = bg.copy()
    d = ImageDraw.Draw(img)
    _draw_distractors(d, look, cfg, state.time_s)
    img.paste(sprite, sprite_pos, sprite)
    _draw_dynamic(d, look, cfg, state)
    dx, dy = _shake(look, state.time_s)
    m = look.margin
    img = img.crop((m + dx, m + dy, m + dx + cfg.width, m + dy + cfg.height))
    drift = look.drift * math.sin(2 * math.pi * state.time_s / look.drift_period)
    level = round(look.brightness + drift, 1)  # quantised, so most frames reuse a table
    return np.array(img.point(_lut(look.contrast, level, look.gains)), dtype=np.uint8)
