"""DuckDB over the lake: every table asset is a view named after it. No Dagster here.

`connect()` opens an in-memory DuckDB and creates one view per table under `lake/`: a
partitioned table (`lake/<name>/*.parquet`) becomes `read_parquet(glob, union_by_name)`, an
unpartitioned one (`lake/<name>.parquet`) a view on its file. Nothing is loaded until queried,
so queries run out of core.
"""

from __future__ import annotations

import duckdb

from assets.storage import is_local, lensless_home


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per lake table."""
    con = duckdb.connect()
    lake = lensless_home() / "lake"
    if not is_local(lake):
        from fsspec import filesystem

        con.register_filesystem(filesystem(lake.protocol))
    if not lake.exists():
        return con
    for entry in sorted(lake.iterdir(), key=lambda p: p.name):
        name = entry.name.removesuffix(".parquet")
        if entry.is_dir() and any(p.name.endswith(".parquet") for p in entry.iterdir()):
            glob = f"{entry.as_posix()}/*.parquet"
        elif entry.name.endswith(".parquet"):
            glob = entry.as_posix()
        else:
            continue
        con.sql(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}', union_by_name=true)")
    return con
