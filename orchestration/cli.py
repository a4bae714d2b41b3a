"""The `lensless` command line. Every command runs through Dagster on the persistent instance
in `$LENSLESS_HOME/dagster`, so what it does shows in `dagster dev` afterwards.

    lensless ingest SOURCE [--engagement FILE] [--label-depth N] [--json]
    lensless demo [--images N]
    lensless dev [--port P] [--host H]
    lensless sql "SELECT …"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence

log = logging.getLogger("lensless")


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr, disable=None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def ensure_demo(n_images: int, size: int = 224, seed: int = 0) -> str:
    """Render the demo catalog (idempotent: unchanged files are kept) and register its engagement.

    Each (images, size, seed) gets its own folder, so a smaller demo never picks up the
    files of a larger one. Returns the folder, which is then ingested like any other source.
    """
    from assets.demo_catalog import DemoCatalogConfig, write_demo_catalog
    from assets.engagement import register_source
    from assets.sources import demo_root

    config = DemoCatalogConfig(n_images=n_images, size=size, seed=seed)
    dest = demo_root() / f"n{n_images}-s{size}-seed{seed}"
    print(f"demo catalog: {n_images} images at {size} px → {dest}", file=sys.stderr)
    write_demo_catalog(str(dest), config, progress=_progress_bar("render demo"))
    register_source(str(dest / "engagement.parquet"))
    return str(dest)


def ingest(source: str, engagement: str | None = None, label_depth: int = 1) -> dict:
    """Cut the source's new files into one batch, ingest it through Dagster, refresh engagement."""
    from assets.engagement import register_source
    from assets.lake import read_table
    from assets.sources import list_source, new_entries, register_batch, register_watched
    from orchestration.instance import get_instance
    from orchestration.runner import materialize_assets

    listing = list_source(source, label_depth=label_depth)
    fresh = new_entries(listing)
    register_watched(source)
    if engagement:
        register_source(os.path.abspath(engagement) if "://" not in engagement else engagement)
    if fresh.height == 0:
        print(f"no new files in {source} ({listing.files.height} listed, all already ingested)", file=sys.stderr)
        return {"batch": None, "ingested": 0, "duplicates": 0, "quarantined": {}, "skipped": 0}
    batch = register_batch(fresh)
    get_instance().add_dynamic_partitions("image_batches", [batch])
    print(f"batch {batch}: {fresh.height} files from {source}", file=sys.stderr)
    run_config = {"ops": {"raw_images": {"config": {}}}}
    materialize_assets(["raw_images"], partition_key=batch, run_config=run_config)
    materialize_assets(["engagement_events"])
    quarantine = read_table("quarantine", [batch])
    return {
        "batch": batch,
        "ingested": read_table("raw_images", [batch]).height,
        "duplicates": read_table("duplicates", [batch]).height,
        "quarantined": dict(sorted(quarantine.group_by("reason").len().iter_rows())),
        "skipped": read_table("skipped", [batch]).height,
    }


def cmd_ingest(args) -> int:
    source = ensure_demo(args.images) if args.source == "demo" else args.source
    summary = ingest(source, args.engagement, args.label_depth)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"batch {summary['batch']}: ingested {summary['ingested']}, duplicates {summary['duplicates']}, "
              f"quarantined {summary['quarantined'] or 0}, skipped {summary['skipped']}")
    return 0


def cmd_demo(args) -> int:
    from assets.storage import lensless_home

    summary = ingest(ensure_demo(args.images))
    print(json.dumps(summary))
    print(f"lake: {lensless_home() / 'lake'}")
    return 0


def cmd_dev(args) -> int:
    from orchestration.instance import ensure_dagster_home

    home = ensure_dagster_home()
    dagster = shutil.which("dagster")
    if dagster is None:
        print("`dagster` is not on PATH; install lensless with `make install`", file=sys.stderr)
        return 2
    target = ["-w", "workspace.yaml"] if os.path.exists("workspace.yaml") else ["-m", "orchestration.definitions"]
    print(f"DAGSTER_HOME={home}; UI on http://{args.host}:{args.port}", file=sys.stderr)
    os.execv(dagster, [dagster, "dev", *target, "-h", args.host, "-p", str(args.port)])
    return 0  # not reached


def cmd_sql(args) -> int:
    import duckdb

    from assets.query import connect

    con = connect()
    try:
        result = con.sql(args.query)
    except duckdb.Error as e:
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
        raise ValueError(f"{e}\ntables: {', '.join(tables) or '(none: ingest something first)'}") from e
    if result is None:
        return 0
    if args.json:
        print(json.dumps(result.pl().to_dicts(), default=str))
    else:
        result.show(max_rows=args.max_rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lensless", description="Visual recommender with a gutted Qwen3-VL.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ingest", help="ingest a folder, fsspec URL or 'demo' as a new batch")
    s.add_argument("source", help="folder, URL (s3://…, memory://…) or 'demo'")
    s.add_argument("--engagement", help="Parquet/CSV engagement file (user_id, image_uri|image_id, event, ts)")
    s.add_argument("--label-depth", type=int, default=1, help="subfolder level that names the label (0: none)")
    s.add_argument("--images", type=int, default=5000, help="demo only: catalog size")
    s.add_argument("--json", action="store_true", help="last line is a JSON summary")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("demo", help="ingest the demo catalog and run the whole graph")
    s.add_argument("--images", type=int, default=5000)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("dev", help="start the Dagster UI (dagster dev) on this project's instance")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; see README before exposing)")
    s.add_argument("--port", type=int, default=3000)
    s.set_defaults(func=cmd_dev)

    s = sub.add_parser("sql", help="query the lake with DuckDB; every table asset is a view")
    s.add_argument("query")
    s.add_argument("--json", action="store_true")
    s.add_argument("--max-rows", type=int, default=40)
    s.set_defaults(func=cmd_sql)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lensless` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"lensless {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
