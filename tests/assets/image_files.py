"""Crafted image files for ingestion tests: every good format and mode, and one bad file per
quarantine reason. `make_mixed_folder` writes them; `EXPECTED` says what must happen to each."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def good_files() -> dict[str, bytes]:
    """name → bytes of a valid image: each format and each mode we promise to convert."""
    base = _photo()
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))))
    i16 = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° CW when shown
    gif_frames = [_photo(seed=s).convert("P") for s in (1, 2)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:])
    return {
        "formats/photo.jpg": encode(_photo(seed=3), "JPEG", quality=85),
        "formats/rotated_exif.jpg": encode(_photo(seed=4), "JPEG", exif=exif.tobytes()),
        "formats/photo.png": encode(_photo(seed=5), "PNG"),
        "formats/photo.webp": encode(_photo(seed=6), "WEBP"),
        "formats/animated.gif": gif.getvalue(),
        "formats/photo.bmp": encode(_photo(seed=7), "BMP"),
        "formats/photo.tiff": encode(_photo(seed=8), "TIFF"),
        "modes/palette.png": encode(_photo(seed=9).convert("P"), "PNG"),
        "modes/gray.png": encode(_photo(seed=10).convert("L"), "PNG"),
        "modes/gray_alpha.png": encode(_photo(seed=11).convert("LA"), "PNG"),
        "modes/rgba.png": encode(rgba, "PNG"),
        "modes/cmyk.jpg": encode(_photo(seed=12).convert("CMYK"), "JPEG"),
        "modes/gray16.png": encode(i16, "PNG"),
    }


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width×height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, expected quarantine reason)."""
    jpeg = encode(_photo(seed=20, w=256, h=256), "JPEG", quality=90)
    png = encode(_photo(seed=21, w=128, h=128), "PNG")
    corrupt = bytearray(png)
    idat = corrupt.index(b"IDAT")
    corrupt[idat + 8: idat + 40] = b"\xff" * 32  # scramble zlib data, keep the length
    return {
        "bad/empty.jpg": (b"", "empty"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "bad/not_an_image.png": (b"hello, I am a text file pretending to be a PNG\n" * 10, "not_an_image"),
        "bad/random_bytes.jpg": (np.random.default_rng(0).bytes(4096), "not_an_image"),
        "bad/bomb.png": (png_bomb(), "too_many_pixels"),
        "bad/one_pixel.png": (encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "too_small"),
        "bad/corrupt_data.png": (bytes(corrupt), "undecodable"),
        # decodable formats outside the accepted ones: PostScript would run Ghostscript
        "bad/postscript.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", "not_an_image"),
        "bad/portable_pixmap.png": (encode(_photo(seed=22, w=96, h=64), "PPM"), "not_an_image"),
    }


def make_mixed_folder(root: Path) -> dict:
    """Write good files, one exact copy of a good file, bad files and non-image files under `root`."""
    good, bad = good_files(), bad_files()
    for name, data in good.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "formats/photo_copy.jpg").write_bytes(good["formats/photo.jpg"])
    for name, (data, _) in bad.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not an image, skipped")
    (root / "formats/.DS_Store").write_bytes(b"\x00\x01")
    return {
        "good": sorted(os.path.join(root, n) for n in good),
        "copy": os.path.join(root, "formats/photo_copy.jpg"),
        "bad": {os.path.join(root, n): r for n, (_, r) in bad.items()},
        "skipped": 2,
    }
