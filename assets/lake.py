"""Reading the ingestion tables across partitions. No Dagster here.

Each batch writes `lake/<table>/<batch>.parquet`; these helpers read one table over all (or
all but one) batches, which is what deduplication, engagement resolution and the index need.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.batch_ingest import DUPLICATE_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA
from assets.storage import lake_path, lensless_home, read_npy, read_parquet

SCHEMAS = {"raw_images": MANIFEST_SCHEMA, "quarantine": QUARANTINE_SCHEMA,
           "duplicates": DUPLICATE_SCHEMA, "skipped": SKIPPED_SCHEMA}


def table_partitions(table: str) -> list[str]:
    """Partition keys that have a file for `table`, sorted."""
    folder = lensless_home() / "lake" / table
    if not folder.exists():
        return []
    return sorted(p.name[: -len(".parquet")] for p in folder.iterdir() if p.name.endswith(".parquet"))


def read_table(table: str, partitions: list[str] | None = None, exclude: str | None = None) -> pl.DataFrame:
    """Concatenate a partitioned table over `partitions` (default: all), leaving out `exclude`."""
    keys = [k for k in (partitions if partitions is not None else table_partitions(table)) if k != exclude]
    frames = [read_parquet(lake_path(table, k)) for k in keys if lake_path(table, k).exists()]
    if not frames:
        return pl.DataFrame(schema=SCHEMAS[table])
    return pl.concat(frames, how="vertical_relaxed")


def catalog() -> pl.DataFrame:
    """Every ingested image (all batches, batch order), with `label_code` (-1 when unlabelled)."""
    manifest = read_table("raw_images")
    labels = sorted(x for x in manifest["label"].unique().to_list() if x is not None)
    codes = {lab: i for i, lab in enumerate(labels)}
    return manifest.with_columns(
        pl.col("label").replace_strict(codes, default=-1, return_dtype=pl.Int64).alias("label_code"))


def load_pixels(frame: pl.DataFrame) -> np.ndarray:
    """Canonical pixels (N, S, S, 3) uint8 for the rows of `frame` (needs `batch`, `row`), in order."""
    out = None
    for (batch,), group in frame.with_row_index("_pos").group_by(["batch"], maintain_order=True):
        pixels = read_npy(lake_path("raw_pixels", batch, "npy"))  # memory-mapped
        if out is None:
            out = np.empty((frame.height, *pixels.shape[1:]), np.uint8)
        out[group["_pos"].to_numpy()] = pixels[group["row"].to_numpy()]
    return out if out is not None else np.zeros((0, 1, 1, 3), np.uint8)
