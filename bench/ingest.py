"""Ingestion throughput against bare PIL decoding of the same files, in one run.

    python bench/ingest.py [--images 2000] [--size 224] [--list-files 10000] [--json]

Renders the demo catalog into a temporary folder, then times (1) bare PIL: open + load
every file, and (2) lensless `ingest_batch`: read, sha256, dedupe, full decode, EXIF, RGB,
canonical resize and the pixel store. Both are single-process, on the same files, in the
same run, interleaved twice to dampen machine noise. Also times listing `--list-files`
files (the sensor's first step). Target: overhead (ours / bare) ≤ 1.5x.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from assets.demo.catalog import DemoCatalogConfig, write_demo_catalog  # noqa: E402
from assets.ingestion.batch import ingest_batch  # noqa: E402
from assets.ingestion.decode import DecodePolicy  # noqa: E402
from assets.ingestion.sources import list_source  # noqa: E402


def bare_pil(uris: list[str]) -> float:
    t = time.perf_counter()
    for uri in uris:
        with open(uri, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
            img.load()
    return time.perf_counter() - t


def ours(files, out: Path, size: int) -> float:
    t = time.perf_counter()
    ingest_batch("bench", files, out / "pixels.npy", DecodePolicy(size=size))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--list-files", type=int, default=10_000)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LENSLESS_HOME"] = str(root / "home")
        write_demo_catalog(root / "demo", DemoCatalogConfig(n_images=args.images, size=args.size))
        files = list_source(str(root / "demo")).files
        uris = files["uri"].to_list()
        bare, mine = [], []
        for _ in range(2):
            bare.append(bare_pil(uris))
            mine.append(ours(files, root, args.size))
        bare_s, ours_s = min(bare), min(mine)

        listing_root = root / "listing"
        for i in range(args.list_files):
            d = listing_root / f"d{i % 50}"
            if i < 50:
                d.mkdir(parents=True)
            (d / f"{i}.jpg").write_bytes(b"x")
        t = time.perf_counter()
        listed = list_source(str(listing_root)).files.height
        list_s = time.perf_counter() - t
        assert listed == args.list_files, f"listed {listed} of {args.list_files}"

    result = {
        "images": len(uris), "size": args.size,
        "bare_pil_images_per_s": round(len(uris) / bare_s, 1),
        "ours_images_per_s": round(len(uris) / ours_s, 1),
        "overhead_ratio": round(ours_s / bare_s, 3), "target_overhead_ratio": 1.5,
        "list_files": args.list_files, "list_seconds": round(list_s, 3),
    }
    if not args.json:
        print(f"bare PIL decode : {result['bare_pil_images_per_s']:8.1f} img/s")
        print(f"lensless ingest : {result['ours_images_per_s']:8.1f} img/s")
        print(f"overhead        : {result['overhead_ratio']:.2f}x (target ≤ 1.5x)")
        print(f"list {args.list_files} files: {list_s:.3f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
