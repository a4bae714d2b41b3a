"""Renders one photo of the demo catalog: an object of a known category, drawn from several
parts and filled with a palette and a pattern, placed on a textured background among clutter,
then scaled, rotated, partly occluded, unevenly lit, blurred, noised and JPEG-compressed. Each
image is a pure function of (seed, index, size, quality range): its RNG is seeded from
(seed, index), so images can be rendered in any process, in any order, and still come out
byte-identical. The palette decides the image's taste cluster; the category does not, so taste is
visible in the pixels but secondary to the object's shape. This module never imports dagster.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from assets.demo.objects import CATEGORIES, DRAWERS, Painter

PATTERNS = ("solid", "striped", "dotted", "checked", "gradient")
TASTES = ("warm", "cool", "pastel", "neon", "earth", "mono")
# palette -> (taste cluster, (primary, secondary, accent)). Two palettes per taste: a cluster spans
# visibly different palettes that share a mood, and every category.
PALETTES: dict[str, tuple[int, tuple[tuple[int, int, int], ...]]] = {
    "sunset": (0, ((232, 108, 58), (250, 192, 82), (168, 38, 52))),
    "terracotta": (0, ((190, 92, 62), (236, 176, 128), (112, 58, 38))),
    "ocean": (1, ((38, 108, 172), (122, 192, 222), (18, 48, 92))),
    "glacier": (1, ((120, 182, 214), (228, 244, 250), (56, 104, 150))),
    "blush": (2, ((240, 178, 196), (252, 232, 212), (188, 160, 222))),
    "mint": (2, ((166, 224, 198), (246, 240, 198), (202, 180, 232))),
    "electric": (3, ((255, 28, 162), (38, 238, 222), (250, 240, 28))),
    "acid": (3, ((156, 255, 38), (255, 98, 18), (118, 38, 255))),
    "forest": (4, ((58, 102, 60), (152, 130, 78), (92, 60, 34))),
    "olive": (4, ((122, 120, 58), (202, 190, 150), (82, 70, 48))),
    "charcoal": (5, ((52, 52, 58), (200, 200, 200), (122, 122, 128))),
    "ivory": (5, ((236, 230, 218), (122, 116, 110), (32, 32, 32))),
}
PALETTE_NAMES = tuple(PALETTES)
_IMAGE_STREAM = 1  # keeps per-image RNG streams apart from the engagement stream
_NOISE_SEED = 20240601  # a constant, so every process builds the same shared noise table
RENDER_VERSION = 1  # bump whenever a change here or in demo_objects alters an image's bytes


@dataclass(frozen=True)
class ImageSpec:
    """What an image shows (its ground truth), and the JPEG quality it is saved at."""

    index: int
    category: str
    palette: str
    pattern: str
    quality: int

    @property
    def style(self) -> str:
        """The visual style, ``<palette>-<pattern>``, e.g. ``ocean-striped``."""
        return f"{self.palette}-{self.pattern}"

    @property
    def taste(self) -> int:
        """The taste cluster id: a function of the palette only, never of the category."""
        return PALETTES[self.palette][0]


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG of image ``index``; it depends on nothing but (seed, index)."""
    return np.random.default_rng([seed, _IMAGE_STREAM, index])


def draw_spec(rng: np.random.Generator, index: int, quality_range: tuple[int, int]) -> ImageSpec:
    """Draws an image's ground truth. Categories cycle with the index so every one is covered."""
    return ImageSpec(
        index=index,
        category=CATEGORIES[index % len(CATEGORIES)],
        palette=PALETTE_NAMES[rng.integers(len(PALETTE_NAMES))],
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        quality=int(rng.integers(quality_range[0], quality_range[1] + 1)),
    )


def render_image(
    seed: int, index: int, size: int, quality_range: tuple[int, int]
) -> tuple[ImageSpec, bytes]:
    """Renders image ``index`` as a ``size`` x ``size`` RGB JPEG; returns its spec and bytes."""
    rng = image_rng(seed, index)
    spec = draw_spec(rng, index, quality_range)
    canvas = _background(rng, size)
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, size, int(rng.integers(1, 6)), (0.08, 0.35))
    box = _place_object(canvas, rng, spec)
    if rng.random() < 0.35:
        _occlude(draw, rng, box)
    _clutter(draw, rng, size, int(rng.integers(0, 3)), (0.04, 0.12))
    if rng.random() < 0.25:  # a slightly missed focus
        canvas = canvas.filter(ImageFilter.BoxBlur(float(rng.uniform(0.5, 1.0))))
    photo = _light_and_noise(canvas, rng)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=spec.quality)
    return spec, buf.getvalue()


# --- pixels -------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1), each (n, n); cached, so never written to."""
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.meshgrid(t, t)  # x varies along columns, y along rows


def _to_u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _mix(c0, c1, t: np.ndarray, size: int) -> Image.Image:
    """Blends two colours (0-255 triples) by t in [0, 1] into an opaque (size, size) RGBA image.

    c0 shows where t is 0 and c1 where it is 1. A t of half the size is doubled (nearest), for
    smooth fields where half-size maths is 4x cheaper and looks the same.
    """
    c0 = np.asarray(c0, np.float32)
    lut = c0 + (np.asarray(c1, np.float32) - c0) * (np.arange(256, dtype=np.float32)[:, None] / 255)
    lut = np.concatenate([lut + 0.5, np.full((256, 1), 255.0, np.float32)], axis=1)
    lut32 = np.ascontiguousarray(lut.astype(np.uint8)).view(np.uint32)[:, 0]  # (256,) RGBA words
    idx = _to_u8(t)
    if idx.shape[0] < size:
        idx = np.repeat(np.repeat(idx, 2, axis=0), 2, axis=1)[:size, :size]
    return Image.fromarray(lut32[idx].view(np.uint8).reshape(size, size, 4), "RGBA")


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    """A desaturated colour, as walls, floors and table tops tend to be."""
    sat = rng.uniform(0.05, 0.5)
    c = rng.uniform(0.25, 0.85) * (1 - sat) + rng.random(3) * sat
    return tuple(int(v * 255) for v in c)


def _smooth_noise(rng: np.random.Generator, cells: int, n: int) -> np.ndarray:
    low = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(low.resize((n, n), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, n: int) -> Image.Image:
    """An (n, n) RGB background: gradient, radial, room, fabric or tiles."""
    x, y = _grid((n + 1) // 2)  # smooth fields: computed at half size, then doubled
    c0, c1 = _muted(rng), _muted(rng)
    kind = rng.integers(5)
    if kind == 0:  # linear gradient
        a = rng.uniform(0, 2 * math.pi)
        t = (x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a) + 0.5
    elif kind == 1:  # radial gradient
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) * 1.4
    elif kind == 2:  # wall over a planked floor
        horizon, planks = rng.uniform(0.5, 0.8), rng.uniform(6, 16)
        gaps = ((y * planks) % 1.0 < 0.06) * 0.6
        t = np.where(y < horizon, y * 0.3, 1.0 - gaps)
    elif kind == 3:  # fabric: smooth blotches plus a fine weave
        t = _smooth_noise(rng, int(rng.integers(3, 9)), x.shape[0])
        t = t + 0.25 * (np.sin(x * n * 0.85) * np.sin(y * n * 0.85)) * rng.uniform(0, 0.5)
    else:  # tiles with grout
        period = rng.uniform(0.08, 0.25)
        checker = (np.floor(x / period) + np.floor(y / period)) % 2
        grout = ((x % period) < 0.012) | ((y % period) < 0.012)
        t = np.where(grout, 1.0, checker * rng.uniform(0.2, 0.6))
    return _mix(c0, c1, t, n).convert("RGB")


def _pattern(rng: np.random.Generator, name: str, n: int, c0, c1) -> Image.Image:
    """Fills an (n, n) RGBA tile with ``name`` in colours c0 (ground) and c1 (figure)."""
    x, y = _grid(n)
    a = rng.uniform(0, math.pi)
    period = rng.uniform(0.07, 0.16)
    if name == "solid":
        return Image.new("RGBA", (n, n), (*c0, 255))
    if name == "striped":
        t = (((x * math.cos(a) + y * math.sin(a)) / period) % 1.0 < rng.uniform(0.3, 0.6)) * 1.0
    elif name == "dotted":
        dx, dy = (x / period) % 1.0 - 0.5, (y / period) % 1.0 - 0.5
        t = (dx * dx + dy * dy < rng.uniform(0.18, 0.32) ** 2) * 1.0
    elif name == "checked":
        t = (np.floor(x / period) + np.floor(y / period)) % 2
    elif name == "gradient":
        t = np.clip((x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a) + 0.5, 0, 1)
    else:
        raise ValueError(f"Unknown pattern {name!r}; valid: {', '.join(PATTERNS)}")
    return _mix(c0, c1, t, n)


def _clutter(draw, rng, size: int, count: int, extent: tuple[float, float]) -> None:
    """Draws ``count`` distractor primitives of random colour, each ``extent`` of the side."""
    for _ in range(count):
        cx, cy = rng.uniform(0, size, 2)
        w, h = rng.uniform(*extent, 2) * size
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        xy = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse(xy, fill=colour)
        elif kind == 1:
            draw.rounded_rectangle(xy, radius=min(w, h) * 0.2, fill=colour)
        elif kind == 2:
            draw.polygon(
                [(cx, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)], colour
            )
        else:
            draw.line([xy[0], xy[1], xy[2], xy[3]], fill=colour, width=max(1, int(size * 0.015)))


def _occlude(draw, rng, box: tuple[int, int, int, int]) -> None:
    """Covers 20-40% of one side of the object's box, as a foreground thing would."""
    x0, y0, x1, y1 = box
    w, h, f = x1 - x0, y1 - y0, rng.uniform(0.2, 0.4)
    side = rng.integers(4)
    if side == 0:
        xy = [x0 - w, y0 - h * 0.2, x0 + w * f, y1 + h * 0.2]
    elif side == 1:
        xy = [x1 - w * f, y0 - h * 0.2, x1 + w, y1 + h * 0.2]
    elif side == 2:
        xy = [x0 - w * 0.2, y0 - h, x1 + w * 0.2, y0 + h * f]
    else:
        xy = [x0 - w * 0.2, y1 - h * f, x1 + w * 0.2, y1 + h]
    colour = _muted(rng)
    if rng.random() < 0.5:
        draw.rectangle(xy, fill=colour)
    else:
        draw.ellipse(xy, fill=colour)


def _light_and_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Directional light, vignette, brightness, contrast, colour cast and sensor noise.

    Works on uint8 images with PIL's lookup tables and channel maths: several times faster here
    than float arrays, whose fresh allocations alone (page faults) cost a millisecond an image.
    """
    n = img.size[0]
    u = (np.arange(_LIGHT_CELLS, dtype=np.float32) + 0.5) / _LIGHT_CELLS - 0.5
    ang, tilt, vignette = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.4), rng.uniform(0, 0.6)
    light = 1.0 + tilt * (u[None, :] * math.cos(ang) + u[:, None] * math.sin(ang))
    light *= 1.0 - vignette * (u[None, :] ** 2 + u[:, None] ** 2)  # (cells, cells), smooth
    peak = float(light.max())  # multiply() can only darken, so the peak moves into the gain
    light_img = Image.fromarray((light * (255.0 / peak) + 0.5).astype(np.uint8))
    light_img = light_img.resize((n, n), Image.Resampling.BILINEAR).convert("RGB")
    img = ImageChops.multiply(img, light_img)
    gain = rng.uniform(0.75, 1.2) * (1.0 + rng.normal(0, 0.05, 3)) * peak
    contrast = rng.uniform(0.75, 1.2)
    mean = float(np.mean(ImageStat.Stat(img).mean)) * float(gain.mean())
    v = np.arange(256, dtype=np.float64)
    # contrast about the image mean: (v * g - m) * c + m, one lookup table per channel
    lut = np.concatenate([(v * g - mean) * contrast + mean for g in gain])
    img = img.point(np.clip(lut + 0.5, 0, 255).astype(np.uint8).tolist())
    table = _noise_table(n, int(rng.integers(_NOISE_LEVELS)))
    start = int(rng.integers(table.size - 3 * n * n))
    noise = Image.fromarray(table[start : start + 3 * n * n].reshape(n, n, 3))
    return ImageChops.add(img, noise, 1.0, -128)


_LIGHT_CELLS = 16  # light and vignette vary slowly: computed on a 16 x 16 grid, then stretched
_NOISE_LEVELS = 8  # sensor noise sigma: level * 1.2 grey levels


@lru_cache(maxsize=2 * _NOISE_LEVELS)
def _noise_table(n: int, level: int) -> np.ndarray:
    """Gaussian noise around 128 (uint8) that images read at random offsets.

    Drawing fresh noise per image would cost more than all the rest of the lighting. Seeded by
    a constant, so every process builds the same tables.
    """
    normal = np.random.default_rng([_NOISE_SEED, level]).standard_normal(12 * n * n)
    return np.clip(normal * (1.2 * level) + 128.5, 0, 255).astype(np.uint8)


def _jitter(rng: np.random.Generator, colour) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(colour) + rng.normal(0, 8, 3), 0, 255))


def _place_object(canvas: Image.Image, rng: np.random.Generator, spec: ImageSpec) -> tuple:
    """Draws the object at a random scale, flips, rotates, drops a shadow and pastes it.

    Returns the pasted object's bounding box in canvas pixels.
    """
    size = canvas.size[0]
    # Drawn at 1x: supersampling looked the same after rotation, noise and JPEG, at 1.4x the cost.
    side = max(16, int(size * rng.uniform(0.45, 0.82)))
    primary, secondary, accent = (_jitter(rng, c) for c in PALETTES[spec.palette][1])
    ink = tuple(int(c * 0.35) for c in primary)
    leaf = _jitter(rng, (62, 138, 70))
    paints = {
        "body": _pattern(rng, spec.pattern, side, primary, secondary),
        "trim": secondary,
        "accent": accent,
        "dark": ink,
        "light": (236, 234, 226),
        "leaf": leaf,
    }
    painter = Painter(side, paints, ink)
    DRAWERS[spec.category](painter, rng)
    obj = painter.img
    if rng.random() < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(np.clip(rng.normal(0, 12), -30, 30))
    obj = obj.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    w, h = obj.size
    x = int(rng.uniform(0.3, 0.7) * size - w / 2)
    y = int(rng.uniform(0.3, 0.7) * size - h / 2)
    alpha = obj.getchannel("A")
    shadow = Image.new("L", canvas.size, 0)
    opacity = rng.uniform(0.3, 0.55)
    shadow_alpha = Image.fromarray((np.asarray(alpha) * opacity).astype(np.uint8))
    dx, dy = (int(v) for v in rng.integers(-size // 25, size // 25 + 1, 2))
    shadow.paste(shadow_alpha.filter(ImageFilter.BoxBlur(max(1, size // 60))), (x + dx, y + dy))
    canvas.paste((12, 12, 16), mask=shadow)
    canvas.paste(obj, (x, y), alpha)
    x0, y0, x1, y1 = alpha.getbbox() or (0, 0, w, h)
    return (x + x0, y + y0, x + x1, y + y1)
