"""DuckDB over the lake: every table is a view named after it. No Dagster here.

`connect(home)` opens an in-memory DuckDB and creates one view per table of `store.lake`
that has been written: a partitioned one reads the files its partitions have at connect
time, `lake/<name>/<partition>.parquet` (union by name), an unpartitioned one its file.
Nothing is loaded until queried, so queries run out of core (with `memory_limit`, DuckDB
spills to disk past it). A remote home is read through fsspec,
never by a DuckDB extension. This is the one DuckDB connection of the pipeline.

`read_only=True` (what `lensless sql` uses) also confines the connection to the lake: file
access only below `<home>/lake`, no extension installs, settings locked; and only statements
that read (`SELECT`, `EXPLAIN`, `PRAGMA`, `SHOW`, `DESCRIBE`) are run (`check_read_only`).
"""

from __future__ import annotations

import re

import duckdb

from assets.store.files import Home
from assets.store.lake import TABLES, has_table, table_partitions, table_path

READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA}


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_EXPLAINED = re.compile(r"\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(.*)", re.S | re.I)


def check_read_only(query: str) -> None:
    """Raise ValueError naming the first statement of `query` that would do more than read.

    `EXPLAIN ANALYZE` runs the statement it explains, so an explained statement is checked
    in turn."""
    for statement in duckdb.extract_statements(query):
        verb = (statement.query.split() or [statement.type.name])[0].upper()  # INSTALL is of type LOAD
        if statement.type not in READ_STATEMENTS:
            raise ValueError(f"{verb} statements change things; lensless sql only reads "
                             "(pass --write to allow them)")
        if statement.type == duckdb.StatementType.EXPLAIN:
            explained = _EXPLAINED.fullmatch(_COMMENTS.sub(" ", statement.query))
            if explained is None:
                raise ValueError("lensless sql reads EXPLAIN [ANALYZE] <statement> only")
            check_read_only(explained.group(1))


def connect(home: Home, memory_limit: str | None = None, read_only: bool = False,
            damaged: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per written lake table (`read_only`: confined
    to reading the lake, see the module doc).

    A view reads its files' schemas when it is created, so one unreadable file fails it. By
    default that error propagates; given a `damaged` dict, the table is left out and its
    error's first line recorded there under its name, so the other tables stay queryable."""
    con = duckdb.connect()
    if memory_limit:
        con.sql(f"SET memory_limit='{memory_limit}'")
    if not home.local:
        from fsspec import filesystem

        con.register_filesystem(filesystem(home.root.protocol))
    for name, table in TABLES.items():
        # the files by name, not a glob: a home path may hold quotes or glob characters ([1])
        if table.partitioned:
            paths = [table_path(home, name, p) for p in table_partitions(home, name)]
        else:
            paths = [table_path(home, name)] if has_table(home, name) else []
        if not paths:  # not written yet
            continue
        files = ", ".join("'{}'".format(path.as_posix().replace("'", "''")) for path in paths)
        try:
            con.sql(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet([{files}], union_by_name=true)")
        except duckdb.Error as e:
            if damaged is None:
                raise
            damaged[name] = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if read_only:
        lake = home.path("lake")
        dirs = [f"{lake.as_posix()}/"]
        if not home.local:  # DuckDB spells an fsspec file "memory:///x/..." where UPath says "memory://x/..."
            dirs.append(f"{lake.protocol}:///{lake.path.lstrip('/')}/")
        con.execute("SET allowed_directories = $dirs", {"dirs": dirs})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con
