"""Reading the ingestion tables across partitions. No Dagster here.

Each batch writes `lake/<table>/<batch>.parquet`; these helpers read one table over all (or
all but one) batches, which is what deduplication, engagement resolution and the index need.
"""

from __future__ import annotations

import polars as pl

from assets.batch_ingest import DUPLICATE_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA
from assets.storage import lake_path, lensless_home, read_parquet

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
