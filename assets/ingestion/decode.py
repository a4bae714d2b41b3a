"""Decode one image file into canonical RGB pixels, or say exactly why it was quarantined.

No Dagster here. `decode_image(data, policy)` fully decodes the bytes (so truncation is
caught now, not at training time), applies the EXIF orientation, converts every mode to RGB
and resizes to the canonical square. Anything wrong raises `Quarantined(reason, detail)`
with `reason` one of `QUARANTINE_REASONS`.

Resize policy (`DecodePolicy.resize`):
- `center_crop` (default): scale so the SHORTER side equals `size` (bicubic, with
  antialiasing), then crop the centre square. No borders; the edges of very wide or tall
  images are lost. This is what CLIP-style encoders are trained on.
- `pad`: scale so the LONGER side equals `size`, then pad to a square with white. Nothing is
  lost; thin images get wide borders.

A JPEG much larger than the canonical size is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
DCT scaling, `Image.draft`), never below the size the resize needs; every byte is still
decoded, so truncation is caught all the same. Decoding and resizing then cost less than
a full-size decode alone (bench/ingest.py --render 640).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats we accept (by extension; the decoder then checks the content itself).
SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# the Pillow decoders those formats need (JPEG's also opens a camera's multi-picture MPO); no
# other decoder runs on ingested bytes (a ".jpg" holding PostScript would otherwise go to Ghostscript)
DECODERS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
QUARANTINE_REASONS = ("empty", "truncated", "not_an_image", "undecodable", "too_many_pixels", "too_small")
RESIZE_POLICIES = ("center_crop", "pad")
EXIF_ORIENTATION = 0x0112
# `DecodePolicy.max_pixels` is the bomb guard, checked from the header before decoding. Pillow
# warns above Image.MAX_IMAGE_PIXELS (89 M px) and refuses above twice that; the refusal is
# quarantined as too_many_pixels, the warning is noise. A filter set once here, because
# decode_image runs in threads and neither `warnings.catch_warnings` nor swapping
# Image.MAX_IMAGE_PIXELS per call is thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow hands every freed image's memory back to the system unless told to keep some blocks
# (PILLOW_BLOCKS_MAX, default 0), so each decode maps and faults in fresh pages, and in
# threads those page faults queue on the process's one memory-map lock. Keeping a few freed
# blocks for reuse lets the ingest threads decode side by side (bench/ingest.py). A higher
# setting from the environment is left as it is.
PILLOW_BLOCKS_KEPT = 16
if Image.core.get_blocks_max() < PILLOW_BLOCKS_KEPT:
    Image.core.set_blocks_max(PILLOW_BLOCKS_KEPT)


@dataclass(frozen=True)
class DecodePolicy:
    size: int = 224  # canonical side of the stored square, px
    max_pixels: int = 64_000_000  # width*height above this is a decompression bomb (Pillow refuses > 178 M itself)
    min_side: int = 32  # images whose shorter side is below this are quarantined
    resize: str = "center_crop"  # one of RESIZE_POLICIES

    def __post_init__(self):
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"Unknown resize policy {self.resize!r}; valid: {', '.join(RESIZE_POLICIES)}")
        if self.size < 8:
            raise ValueError(f"canonical size must be >= 8 px, got {self.size}")
        if self.max_pixels <= 0 or self.min_side < 1:
            raise ValueError(f"max_pixels and min_side must be positive, got {self.max_pixels}, {self.min_side}")


class Quarantined(Exception):
    """An image that will not be ingested, with a machine-readable reason and a human detail."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in QUARANTINE_REASONS, f"unknown quarantine reason {reason!r}"
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB. Transparency is composited over white; 16-bit is scaled to 8."""
    mode = img.mode
    if mode in ("P", "RGB", "L") and "transparency" in img.info:  # a palette entry or colour key
        img = img.convert("LA" if mode == "L" else "RGBA")
        mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # 65535 -> 255
        else:  # 32-bit int or float: stretch the finite range; NaN and inf pixels take its low end
            finite = np.isfinite(arr)
            if not finite.any():
                raise Quarantined("undecodable", f"mode {mode}: no pixel has a finite value")
            lo, hi = float(arr[finite].min()), float(arr[finite].max())
            arr = np.where(finite, arr - lo, 0.0)
            arr = arr * (255.0 / (hi - lo)) if hi > lo else arr
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def resize_canonical(img: Image.Image, size: int, policy: str = "center_crop") -> np.ndarray:
    """Resize an RGB image to a `size`×`size` uint8 array under `policy` (see module docstring)."""
    w, h = img.size
    if (w, h) == (size, size):  # already canonical: no resampling, no copy
        return np.asarray(img, dtype=np.uint8)
    if policy == "center_crop":  # resample only the centre square (a 2M x 32 strip stays small)
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
                         reducing_gap=3.0)
    else:
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
        img = canvas
    arr = np.asarray(img, dtype=np.uint8)
    assert arr.shape == (size, size, 3), f"resize produced {arr.shape}, expected {(size, size, 3)}"
    return arr


def _scaled_size(w: int, h: int, policy: DecodePolicy) -> tuple[int, int]:
    """The size `resize_canonical` scales a w x h image to before cropping or padding."""
    scale = policy.size / (min(w, h) if policy.resize == "center_crop" else max(w, h))
    return max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))


def decode_image(data: bytes, policy: DecodePolicy = DecodePolicy()) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode `data` to canonical pixels `(size, size, 3) uint8` and the original (width, height).

    Raises `Quarantined` with reason empty | not_an_image | too_many_pixels | too_small |
    truncated | undecodable.
    """
    if len(data) == 0:
        raise Quarantined("empty", "file has 0 bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=DECODERS)
    except UnidentifiedImageError as e:
        raise Quarantined("not_an_image", f"not one of the accepted formats ({', '.join(DECODERS)})") from e
    except Image.DecompressionBombError as e:  # above 2x Image.MAX_IMAGE_PIXELS: Pillow's own guard
        raise Quarantined("too_many_pixels", str(e)) from e
    except Exception as e:  # header present but unreadable
        raise Quarantined("undecodable", f"{type(e).__name__}: {e}") from e
    w, h = img.size
    if w * h > policy.max_pixels:
        raise Quarantined("too_many_pixels", f"{w}x{h} = {w * h} px > limit {policy.max_pixels}")
    if min(w, h) < policy.min_side:
        raise Quarantined("too_small", f"{w}x{h}: shorter side < {policy.min_side} px")
    if img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when the canonical size allows
        img.draft(None, _scaled_size(w, h, policy))
    try:
        img.load()  # full decode (of every byte, at any scale): first frame for GIF/WebP/TIFF
    except (OSError, EOFError, SyntaxError, ValueError) as e:
        msg = str(e).lower()
        if isinstance(e, EOFError) or "truncat" in msg or "premature end" in msg:
            raise Quarantined("truncated", f"{type(e).__name__}: {e}") from e
        raise Quarantined("undecodable", f"{type(e).__name__}: {e}") from e
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        if orientation != 1:  # transposing copies: only when needed
            img = ImageOps.exif_transpose(img)
        # record what a viewer shows: the file's full size, sides swapped by a 90° EXIF rotation
        size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        return resize_canonical(to_rgb(img), policy.size, policy.resize), size
    except Quarantined:
        raise
    except Exception as e:
        raise Quarantined("undecodable", f"{type(e).__name__}: {e}") from e
