"""Ingestion throughput against bare PIL decoding of the same files, in one run.

    python bench/ingest.py [--images 2000] [--size 224] [--render 224] [--repeats 3] [--workers N] [--json]

Renders the demo catalog at `--render` px into a temporary folder, then times, on the same
files (stored at the canonical `--size`):
  bare    one thread of PIL open + load per file (the decoder alone);
  ours    lensless `ingest_batch` as the asset runs it: read, sha256, dedupe, full decode,
          EXIF, RGB, canonical resize and the pixel store, on `--workers` threads (default:
          one per usable CPU);
  serial  the same with one thread;
  write   the pixel store alone: the same number of canonical rows through `NpyWriter`,
          with direct IO (as ingestion writes) and, as `buffered`, through the page cache.
They run in turn (bare, ours, serial, write, buffered, bare, ...; models/timing.py)
`--repeats` times; medians and ranges are reported. Also times listing `--list-files` files (the sensor's
first step). Target: overhead (ours / bare, ratio of medians) ≤ 1.5x.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from assets.demo.catalog import DemoCatalogConfig, write_demo_catalog  # noqa: E402
from assets.ingestion.batch import ingest_batch  # noqa: E402
from assets.ingestion.decode import DecodePolicy  # noqa: E402
from assets.ingestion.sources import list_source  # noqa: E402
from assets.store.npy import NpyWriter  # noqa: E402
from index.threads import usable_cpus  # noqa: E402
from models.timing import interleaved, summarise  # noqa: E402


def bare_pil(uris: list[str]) -> None:
    for uri in uris:
        with open(uri, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
            img.load()


def store(rows: int, out: Path, size: int, direct: bool) -> None:
    row = np.full((size, size, 3), 127, np.uint8)
    writer = NpyWriter(out / f"pixels-{next(_CALLS)}.npy", (rows, size, size, 3), direct=direct)
    for _ in range(rows):
        writer.append(row)
    writer.close()


def ours(files, out: Path, size: int, workers: int | None) -> None:
    # a new file each call, as for a new batch (replacing the last one would time its deletion)
    ingest_batch("bench", files, out / f"pixels-{next(_CALLS)}.npy", DecodePolicy(size=size), workers=workers)


_CALLS = itertools.count()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224, help="canonical stored side, px")
    ap.add_argument("--render", type=int, default=None, help="side of the rendered files, px (default: --size)")
    ap.add_argument("--list-files", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    ap.add_argument("--workers", type=int, default=None, help="ingest threads (default: usable CPUs)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LENSLESS_HOME"] = str(root / "home")
        write_demo_catalog(root / "demo", DemoCatalogConfig(n_images=args.images, size=args.render or args.size))
        files = list_source(str(root / "demo")).files
        uris = files["uri"].to_list()
        times = interleaved({"bare": lambda: bare_pil(uris),
                             "ours": lambda: ours(files, root, args.size, args.workers),
                             "serial": lambda: ours(files, root, args.size, 1),
                             "write": lambda: store(len(uris), root, args.size, True),
                             "buffered": lambda: store(len(uris), root, args.size, False)},
                            repeats=args.repeats)
        med = {name: summarise(s) for name, s in times.items()}
        bare_s, ours_s, serial_s = (med[n]["median"] for n in ("bare", "ours", "serial"))

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

    rate = lambda name, key: round(len(uris) / med[name][key], 1)  # noqa: E731
    mb = lambda name: round(len(uris) * args.size * args.size * 3 / med[name]["median"] / 1e6)  # noqa: E731
    result = {
        "images": len(uris), "size": args.size, "render": args.render or args.size, "workers": args.workers or usable_cpus(), "repeats": args.repeats,
        "bare_pil_images_per_s": rate("bare", "median"),
        "bare_range": [rate("bare", "max"), rate("bare", "min")],
        "ours_images_per_s": rate("ours", "median"), "ours_range": [rate("ours", "max"), rate("ours", "min")],
        "serial_images_per_s": rate("serial", "median"),
        "write_mb_per_s": mb("write"), "buffered_write_mb_per_s": mb("buffered"),
        "overhead_ratio": round(ours_s / bare_s, 3), "serial_overhead_ratio": round(serial_s / bare_s, 3),
        "target_overhead_ratio": 1.5,
        "list_files": args.list_files, "list_seconds": round(list_s, 3),
    }
    if not args.json:
        print(f"bare PIL decode : {result['bare_pil_images_per_s']:8.1f} img/s")
        print(f"lensless ingest : {result['ours_images_per_s']:8.1f} img/s ({result['workers']} threads)")
        print(f"  one thread    : {result['serial_images_per_s']:8.1f} img/s")
        print(f"pixel store     : {result['write_mb_per_s']:8d} MB/s direct, "
              f"{result['buffered_write_mb_per_s']} MB/s through the page cache")
        print(f"overhead        : {result['overhead_ratio']:.2f}x (target ≤ 1.5x; one thread "
              f"{result['serial_overhead_ratio']:.2f}x)")
        print(f"list {args.list_files} files: {list_s:.3f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
