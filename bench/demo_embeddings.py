"""Real embeddings at index scale: more demo images, embedded by a home's trained encoder.

    python bench/demo_embeddings.py --lake HOME --n 200000 --out /tmp/demo-200k.npy [--size 64]
    python bench/index.py --vectors /tmp/demo-200k.npy

A demo home holds about 5,000 image embeddings, too few to benchmark an index at 200k or 1M.
This renders demo images past the home's own (same seed, indices from 10**7 on: new objects,
palettes, patterns, clutter and noise, the same generator), decodes each as ingestion does
(`decode_image`, canonical side `--size`) and embeds it with the home's current
`image_encoder`. `--size` defaults to the encoder's input side, so the encoder's own resize is
a no-op; the home's images are rendered at 224 px and resized by the encoder instead.
Rendering runs in `--workers` processes, the encoder in this one. Writes a float32 (n, d)
`.npy` of unit vectors and prints its path.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from assets.demo.catalog import DemoCatalogConfig  # noqa: E402
from assets.demo.render import render_image  # noqa: E402
from assets.ingestion.decode import DecodePolicy, decode_image  # noqa: E402
from assets.store.files import Home  # noqa: E402
from assets.store.models import current_dir  # noqa: E402
from assets.store.npy import NpyWriter  # noqa: E402
from models.embed import iter_embeddings  # noqa: E402
from models.encoder import ImageEncoder  # noqa: E402

FIRST_INDEX = 10**7  # far past any demo home's own images
CHUNK = 1000


def render_chunk(task: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels (n, size, size, 3) of demo images start .. start+n-1, decoded as ingestion does."""
    seed, start, n, size = task
    policy = DecodePolicy(size=size, min_side=min(32, size))
    quality = DemoCatalogConfig().jpeg_quality_range
    return np.stack([decode_image(render_image(seed, i, size, quality)[1], policy)[0]
                     for i in range(start, start + n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", required=True, help="a lensless home with a trained image_encoder")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--out", required=True, help="the .npy to write")
    ap.add_argument("--size", type=int, default=None, help="rendered side, px (default: the encoder's input side)")
    ap.add_argument("--seed", type=int, default=DemoCatalogConfig().seed)
    ap.add_argument("--workers", type=int, default=2, help="render processes")
    args = ap.parse_args()
    encoder_dir = current_dir(Home.at(args.lake), "image_encoder")
    model = ImageEncoder.from_checkpoint(encoder_dir)
    size = args.size or model.config.input_size
    tasks = [(args.seed, FIRST_INDEX + s, min(CHUNK, args.n - s), size) for s in range(0, args.n, CHUNK)]
    writer = NpyWriter(args.out, (args.n, model.config.dim), np.float32)
    started, done = time.perf_counter(), 0
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for pixels in pool.imap(render_chunk, tasks):
            for block in iter_embeddings(model, pixels):
                for row in block:
                    writer.append(row)
            done += len(pixels)
            if done % (20 * CHUNK) == 0 or done == args.n:
                rate = done / (time.perf_counter() - started)
                print(f"{done:>9,} / {args.n:,} embedded ({rate:,.0f} img/s)", file=sys.stderr, flush=True)
    writer.close()
    print(f"{args.n:,} embeddings of encoder {encoder_dir.name} → {args.out}")


if __name__ == "__main__":
    main()
