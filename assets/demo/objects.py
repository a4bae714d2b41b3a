"""The objects of the demo catalog: one drawer per category, each composing a recognisable
object (a mug, a chair, a lamp, ...) from filled, outlined parts on a transparent canvas. Drawers
take coordinates in [0, 1] and an RNG for small variations of shape; the style comes in through
named paints (``body`` is the patterned main surface). This module never imports dagster.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = (
    "mug",
    "chair",
    "lamp",
    "shoe",
    "bag",
    "bottle",
    "clock",
    "plant",
    "umbrella",
    "teapot",
)


class Painter:
    """Paints parts in order on a square RGBA canvas, taking coordinates in [0, 1].

    A paint is a name in ``paints``: a colour, or an RGBA pattern tile shown through the part.
    """

    def __init__(self, side: int, paints: dict, ink: tuple[int, int, int]):
        self.side, self.paints, self.ink = side, paints, ink
        self.img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)
        self.stroke = max(1, round(side * 0.012))

    def px(self, xy):
        """Unit coordinates to pixels: a flat list of numbers, or a list of (x, y) points."""
        if isinstance(xy[0], tuple):
            return [(u * self.side, v * self.side) for u, v in xy]
        return [v * self.side for v in xy]

    def _fill(self, shape: str, xy, paint, **kw) -> None:
        paint = self.paints[paint]
        if isinstance(paint, Image.Image):
            # mask only the part's box: a whole-canvas mask per part costs more than the drawing
            pts = xy if isinstance(xy[0], tuple) else list(zip(xy[0::2], xy[1::2], strict=True))
            x0 = max(0, int(min(u for u, _ in pts)) - 1)
            y0 = max(0, int(min(v for _, v in pts)) - 1)
            x1 = min(self.side, int(max(u for u, _ in pts)) + 2)
            y1 = min(self.side, int(max(v for _, v in pts)) + 2)
            if x1 <= x0 or y1 <= y0:
                return
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            shifted = [(u - x0, v - y0) for u, v in pts]
            if not isinstance(xy[0], tuple):
                shifted = [c for pt in shifted for c in pt]
            getattr(ImageDraw.Draw(mask), shape)(shifted, fill=255, **kw)
            self.img.paste(paint.crop((x0, y0, x1, y1)), (x0, y0), mask)
        else:
            getattr(self.draw, shape)(xy, fill=paint, **kw)

    def part(self, shape: str, xy, paint: str, outline: bool = True, **kw) -> None:
        """A filled shape (ellipse, rectangle, rounded_rectangle, polygon, chord, pieslice)."""
        xy = self.px(xy)
        if "radius" in kw:
            kw["radius"] = kw["radius"] * self.side
        self._fill(shape, xy, paint, **kw)
        if outline:
            getattr(self.draw, shape)(xy, outline=self.ink, width=self.stroke, **kw)

    def ring(self, xy, thickness: float, paint: str, start: float = 0, end: float = 360) -> None:
        """An outlined band along an ellipse (a handle), from ``start`` to ``end`` degrees."""
        xy, t = self.px(xy), max(1, round(thickness * self.side))
        colour = self.paints[paint]
        if isinstance(colour, Image.Image):
            colour = colour.getpixel((self.side // 2, self.side // 2))
        self.draw.arc(xy, start, end, fill=colour, width=t)
        inner = [xy[0] + t, xy[1] + t, xy[2] - t, xy[3] - t]
        self.draw.arc(xy, start, end, fill=self.ink, width=self.stroke)
        if inner[2] > inner[0] and inner[3] > inner[1]:
            self.draw.arc(inner, start, end, fill=self.ink, width=self.stroke)

    def line(self, pts, paint: str, width: float) -> None:
        """A stroke through ``pts`` of ``width`` (in units of the side)."""
        w = max(1, round(width * self.side))
        self.draw.line(self.px(pts), fill=self.paints[paint], width=w, joint="curve")

    def cut(self, shape: str, xy) -> None:
        """Makes a shape transparent again (scallops, gaps)."""
        getattr(self.draw, shape)(self.px(xy), fill=(0, 0, 0, 0))


def _leaf(cx: float, cy: float, length: float, width: float, angle: float) -> list:
    t = np.linspace(0.0, 1.0, 9)
    half = width / 2 * np.sin(np.pi * t)
    along = np.concatenate([t, t[::-1]]) * length
    across = np.concatenate([half, -half[::-1]])
    ca, sa = math.cos(angle), math.sin(angle)
    return [
        (cx + a * ca - b * sa, cy + a * sa + b * ca) for a, b in zip(along, across, strict=True)
    ]


def _mug(p: Painter, r: np.random.Generator) -> None:
    w, h = r.uniform(0.42, 0.56), r.uniform(0.5, 0.66)
    x0, y0 = 0.44 - w / 2, 0.52 - h / 2
    x1, y1 = x0 + w, y0 + h
    p.ring([x1 - 0.12, y0 + 0.12 * h, x1 + 0.2, y0 + 0.78 * h], 0.06, "trim")
    p.part("rounded_rectangle", [x0, y0, x1, y1], "body", radius=0.05)
    if r.random() < 0.5:
        p.part("rectangle", [x0, y0 + 0.3 * h, x1, y0 + 0.42 * h], "accent")
    p.part("ellipse", [x0, y0 - 0.04, x1, y0 + 0.04], "dark")


def _chair(p: Painter, r: np.random.Generator) -> None:
    seat = r.uniform(0.52, 0.62)
    p.part("rectangle", [0.3, seat + 0.05, 0.35, 0.85], "accent")
    p.part("rectangle", [0.75, seat + 0.05, 0.8, 0.85], "accent")
    p.part(
        "rounded_rectangle", [0.18, r.uniform(0.05, 0.15), 0.34, seat + 0.04], "body", radius=0.03
    )
    p.part("polygon", [(0.18, seat), (0.72, seat), (0.86, seat + 0.09), (0.3, seat + 0.09)], "body")
    for x in (0.18, 0.62, 0.8):
        p.part("rectangle", [x, seat + 0.09, x + 0.06, 0.96], "accent")
    if r.random() < 0.5:
        p.part("rectangle", [0.2, seat - 0.2, 0.32, seat - 0.14], "trim")


def _lamp(p: Painter, r: np.random.Generator) -> None:
    top, bottom = r.uniform(0.05, 0.12), r.uniform(0.4, 0.5)
    p.part("chord", [0.36, bottom - 0.08, 0.64, bottom + 0.08], "light", start=0, end=180)
    p.part("rectangle", [0.47, bottom, 0.53, 0.86], "accent")
    p.part("rounded_rectangle", [0.27, 0.84, 0.73, 0.94], "trim", radius=0.03)
    if r.random() < 0.5:
        flare = r.uniform(0.1, 0.22)
        p.part(
            "polygon",
            [(0.34, top), (0.66, top), (0.66 + flare, bottom), (0.34 - flare, bottom)],
            "body",
        )
    else:
        p.part("pieslice", [0.16, top, 0.84, 2 * bottom - top], "body", start=180, end=360)


def _shoe(p: Painter, r: np.random.Generator) -> None:
    ankle = r.uniform(0.25, 0.42)
    upper = [
        (0.1, 0.74),
        (0.1, ankle),
        (0.34, ankle - 0.04),
        (0.48, 0.5),
        (0.78, 0.54),
        (0.93, 0.66),
        (0.93, 0.74),
    ]
    p.part("polygon", upper, "body")
    p.part("chord", [0.7, 0.52, 1.0, 0.86], "trim", start=180, end=360)
    p.part("rounded_rectangle", [0.06, 0.72, 0.96, 0.84], "light", radius=0.04)
    p.part("ellipse", [0.12, ankle - 0.06, 0.36, ankle + 0.03], "dark")
    for i in range(3):
        x = 0.42 + 0.07 * i
        p.line([(x, 0.46 + 0.02 * i), (x + 0.07, 0.52 + 0.02 * i)], "light", 0.02)


def _bag(p: Painter, r: np.random.Generator) -> None:
    top = r.uniform(0.3, 0.4)
    p.ring([0.3, top - 0.26, 0.7, top + 0.2], 0.05, "accent", start=180, end=360)
    p.part("rounded_rectangle", [0.14, top, 0.86, 0.9], "body", radius=0.06)
    p.part(
        "polygon",
        [(0.14, top), (0.86, top), (0.86, top + 0.2), (0.5, top + 0.3), (0.14, top + 0.2)],
        "trim",
    )
    p.part("rectangle", [0.45, top + 0.24, 0.55, top + 0.34], "accent")


def _bottle(p: Painter, r: np.random.Generator) -> None:
    w = r.uniform(0.16, 0.24)
    shoulder = r.uniform(0.3, 0.4)
    p.part("rectangle", [0.44, 0.12, 0.56, shoulder], "body")
    p.part(
        "chord", [0.5 - w, shoulder - 0.12, 0.5 + w, shoulder + 0.12], "body", start=180, end=360
    )
    p.part("rounded_rectangle", [0.5 - w, shoulder, 0.5 + w, 0.95], "body", radius=0.05)
    p.part("rectangle", [0.42, 0.04, 0.58, 0.14], "accent")
    label = r.uniform(0.5, 0.6)
    p.part("rectangle", [0.5 - w, label, 0.5 + w, label + 0.2], "light")
    for i in range(2):
        p.line(
            [(0.5 - w * 0.6, label + 0.07 + 0.06 * i), (0.5 + w * 0.6, label + 0.07 + 0.06 * i)],
            "dark",
            0.015,
        )


def _clock(p: Painter, r: np.random.Generator) -> None:
    if r.random() < 0.6:  # an alarm clock: bells and feet
        p.part("ellipse", [0.1, 0.04, 0.34, 0.26], "accent")
        p.part("ellipse", [0.66, 0.04, 0.9, 0.26], "accent")
        p.line([(0.26, 0.84), (0.16, 0.97)], "dark", 0.04)
        p.line([(0.74, 0.84), (0.84, 0.97)], "dark", 0.04)
    p.part("ellipse", [0.1, 0.12, 0.9, 0.92], "body")
    p.part("ellipse", [0.19, 0.21, 0.81, 0.83], "light")
    for k in range(12):
        a = k * math.pi / 6
        d0 = 0.25 if k % 3 else 0.22
        p.line(
            [
                (0.5 + d0 * math.cos(a), 0.52 + d0 * math.sin(a)),
                (0.5 + 0.29 * math.cos(a), 0.52 + 0.29 * math.sin(a)),
            ],
            "dark",
            0.015,
        )
    for length, width in ((0.16, 0.03), (0.24, 0.018)):
        a = r.uniform(0, 2 * math.pi)
        p.line(
            [(0.5, 0.52), (0.5 + length * math.cos(a), 0.52 + length * math.sin(a))], "dark", width
        )
    p.part("ellipse", [0.47, 0.49, 0.53, 0.55], "accent", outline=False)


def _plant(p: Painter, r: np.random.Generator) -> None:
    rim = r.uniform(0.5, 0.6)
    for _ in range(int(r.integers(5, 9))):
        angle = r.uniform(-math.pi * 0.95, -math.pi * 0.05)
        p.part("polygon", _leaf(0.5, rim, r.uniform(0.3, 0.5), r.uniform(0.1, 0.18), angle), "leaf")
    p.part("polygon", [(0.24, rim), (0.76, rim), (0.68, 0.96), (0.32, 0.96)], "body")
    p.part("rectangle", [0.21, rim - 0.03, 0.79, rim + 0.06], "trim")


def _umbrella(p: Painter, r: np.random.Generator) -> None:
    top = r.uniform(0.06, 0.14)
    rib = 0.5
    p.line([(0.5, top), (0.5, 0.84)], "dark", 0.025)
    p.ring([0.5, 0.76, 0.66, 0.94], 0.025, "dark", start=0, end=180)
    p.part("pieslice", [0.04, top, 0.96, 2 * rib - top], "body", start=180, end=360)
    for k in range(4):  # scalloped hem between the ribs
        x = 0.04 + 0.115 + 0.23 * k
        p.cut("ellipse", [x - 0.115, rib - 0.05, x + 0.115, rib + 0.05])
    for k in range(5):
        p.line([(0.5, top), (0.04 + 0.23 * k, rib)], "dark", 0.01)
    p.line([(0.5, top - 0.05), (0.5, top)], "accent", 0.03)


def _teapot(p: Painter, r: np.random.Generator) -> None:
    p.ring([0.68, 0.38, 0.94, 0.78], 0.05, "trim")
    tip = r.uniform(0.22, 0.36)
    p.part("polygon", [(0.3, 0.62), (0.08, tip), (0.14, tip - 0.03), (0.36, 0.52)], "trim")
    p.part("ellipse", [0.2, 0.3, 0.82, 0.92], "body")
    p.part("chord", [0.34, 0.22, 0.68, 0.42], "accent", start=180, end=360)
    p.part("ellipse", [0.47, 0.16, 0.55, 0.24], "accent")


DRAWERS: dict[str, Callable[[Painter, np.random.Generator], None]] = {
    "mug": _mug,
    "chair": _chair,
    "lamp": _lamp,
    "shoe": _shoe,
    "bag": _bag,
    "bottle": _bottle,
    "clock": _clock,
    "plant": _plant,
    "umbrella": _umbrella,
    "teapot": _teapot,
}
assert tuple(DRAWERS) == CATEGORIES, "every category needs a drawer, in CATEGORIES order"
