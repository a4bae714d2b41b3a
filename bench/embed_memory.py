"""Peak memory of embedding one partition, at two partition sizes, streamed from a memmap.

    python bench/embed_memory.py [--sizes 1000 4000] [--batch-size 256] [--json]

For each size, one subprocess writes N canonical 224 px uint8 images to an .npy; a fresh
subprocess then embeds it exactly as the `image_embeddings` asset does
(`assets.store.npy.iter_npy_rows` blocks into `models.embed.iter_embeddings`) and reports its
peak RSS (ru_maxrss), so peaks do not mix.
Streaming means peak RSS grows with the batch size, not with N: the ratio of the two
peaks should stay near 1 while N grows 4x. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write(n: int, path: str) -> None:
    import numpy as np

    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 224, 224, 3))
    rng = np.random.default_rng(0)
    for i in range(0, n, 256):
        arr[i: i + 256] = rng.integers(0, 255, (min(256, n - i), 224, 224, 3), dtype=np.uint8)
    arr.flush()


def child(n: int, batch_size: int, path: str) -> None:
    sys.path.insert(0, str(ROOT))
    from assets.store.npy import iter_npy_rows
    from models.embed import iter_embeddings
    from models.encoder import ImageEncoder, encoder_config

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = ImageEncoder(encoder_config("small"))
    t = time.perf_counter()
    rows = sum(len(b) for b in iter_embeddings(model, iter_npy_rows(path, batch_size), batch_size=batch_size))
    print(json.dumps({"n": n, "rows": rows, "seconds": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_mb": base / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 4000])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--write", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        write(args.write, args.path)
        return
    if args.child:
        child(args.child, args.batch_size, args.path)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            subprocess.run([sys.executable, __file__, "--write", str(n), "--path", f"{tmp}/p{n}.npy"], check=True)
            out = subprocess.run([sys.executable, __file__, "--child", str(n), "--batch-size", str(args.batch_size),
                                  "--path", f"{tmp}/p{n}.npy"], capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small, large = results
    summary = {"sizes": args.sizes, "batch_size": args.batch_size,
               "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in results],
               "images_per_s": [round(r["rows"] / r["seconds"], 1) for r in results],
               "partition_bytes_mb": [round(n * 224 * 224 * 3 / 2**20, 1) for n in args.sizes],
               "peak_ratio_large_over_small": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)}
    if not args.json:
        for n, r in zip(args.sizes, results, strict=True):
            print(f"N={n:6d}: peak RSS {r['peak_rss_mb']:.0f} MB for a {n * 224 * 224 * 3 / 2**20:.0f} MB partition")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
