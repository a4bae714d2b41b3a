"""DuckDB over the lake: every table is a view named after it. No Dagster here.

`connect(home)` opens an in-memory DuckDB and creates one view per table of `store.lake`
that has been written: a partitioned one reads `lake/<name>/*.parquet` (union by name), an
unpartitioned one its file. Nothing is loaded until queried, so queries run out of core
(with `memory_limit`, DuckDB spills to disk past it). A remote home is read through fsspec,
never by a DuckDB extension. This is the one DuckDB connection of the pipeline.
"""

from __future__ import annotations

import duckdb

from assets.store.files import Home
from assets.store.lake import TABLES, has_table, table_path


def connect(home: Home, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per written lake table."""
    con = duckdb.connect()
    if memory_limit:
        con.sql(f"SET memory_limit='{memory_limit}'")
    if not home.local:
        from fsspec import filesystem

        con.register_filesystem(filesystem(home.root.protocol))
    for name, table in TABLES.items():
        if not has_table(home, name):
            continue
        path = home.path("lake", name) if table.partitioned else table_path(home, name)
        glob = f"{path.as_posix()}/*.parquet" if table.partitioned else path.as_posix()
        con.sql(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}', union_by_name=true)")
    return con
