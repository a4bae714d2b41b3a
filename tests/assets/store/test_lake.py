"""store.lake: every table read and written one way, partitions, registries and the home."""

import polars as pl
import pytest

from assets.store.files import Home, append_record, read_records
from assets.store.lake import (
    MANIFEST_SCHEMA,
    TABLES,
    add_to_registry,
    has_table,
    read_registry,
    read_table,
    table_partitions,
    write_table,
)
from assets.store.query import connect


def rows(batch: str, n: int) -> pl.DataFrame:
    return pl.DataFrame([{"image_id": f"{batch}{i}", "row": i, "uri": f"/{batch}/{i}.png", "sha256": f"{batch}{i}",
                          "width": 8, "height": 8, "label": None, "batch": batch, "ingested_at": None}
                         for i in range(n)], schema=MANIFEST_SCHEMA)


def test_partitioned_table_reads_all_some_or_none(home):
    assert read_table(home, "raw_images").schema == pl.Schema(MANIFEST_SCHEMA)  # nothing yet: empty
    write_table(home, "raw_images", rows("a", 2), "a")
    write_table(home, "raw_images", rows("b", 3), "b")
    assert table_partitions(home, "raw_images") == ["a", "b"]
    assert read_table(home, "raw_images").height == 5
    assert read_table(home, "raw_images", ["b"]).height == 3
    assert read_table(home, "raw_images", exclude="b")["batch"].unique().to_list() == ["a"]


def test_unpartitioned_table_missing_names_the_asset(home):
    assert not has_table(home, "candidates")
    with pytest.raises(FileNotFoundError, match="materialise candidates first"):
        read_table(home, "candidates")


def test_writes_check_the_schema_and_the_partitioning(home):
    with pytest.raises(ValueError, match="takes columns"):
        write_table(home, "raw_images", pl.DataFrame({"image_id": ["x"]}), "a")
    with pytest.raises(ValueError, match="is partitioned by batch"):
        write_table(home, "raw_images", rows("a", 1))
    with pytest.raises(ValueError, match="is not partitioned"):
        read_table(home, "candidates", ["a"])
    with pytest.raises(ValueError, match="Unknown table 'nope'; valid: batch_files"):
        read_table(home, "nope")


def test_registries_keep_order_without_duplicates(home):
    for source in ("s1", "s2", "s1"):
        add_to_registry(home, "watched_sources", source)
    assert read_registry(home, "watched_sources") == ["s1", "s2"]
    with pytest.raises(ValueError, match="Unknown registry"):
        read_registry(home, "pointers")


def _add_entries(root: str, registry: str, prefix: str, n: int) -> None:
    for i in range(n):
        add_to_registry(Home.at(root), registry, f"{prefix}{i}")


@pytest.mark.parametrize("registry", ["watched_sources", "engagement_sources"])
def test_concurrent_registry_writers_lose_nothing(home, registry):
    """Two processes adding at once: every entry of both is there (one log record per change)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_add_entries, args=(str(home.root), registry, p, 40)) for p in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    assert sorted(read_registry(home, registry)) == sorted(f"{p}{i}" for p in "ab" for i in range(40))


def test_duckdb_views_cover_the_written_tables(home):
    write_table(home, "raw_images", rows("a", 2), "a")
    write_table(home, "raw_images", rows("b", 3), "b")
    con = connect(home)
    assert con.execute("SELECT count(*) FROM raw_images").fetchall()[0][0] == 5
    views = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert views == {"raw_images"} and views <= set(TABLES)


def test_home_from_the_environment_or_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSLESS_HOME", str(tmp_path / "h"))
    assert Home.from_env() == Home.at(tmp_path / "h") and Home.from_env().local
    monkeypatch.delenv("LENSLESS_HOME")
    monkeypatch.chdir(tmp_path)
    assert Home.from_env().local_dir() == tmp_path / ".lensless"
    assert not Home.at("s3://bucket/lensless").local


def test_read_only_connection_reads_the_lake_and_nothing_else(home, tmp_path):
    import duckdb

    from assets.store.query import check_read_only

    write_table(home, "raw_images", rows("a", 2), "a")
    con = connect(home, read_only=True)
    assert con.execute("SELECT count(*) FROM raw_images").fetchall()[0][0] == 2
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    for query in (f"SELECT * FROM read_text('{outside}')", f"COPY raw_images TO '{tmp_path / 'x.parquet'}'",
                  "SET enable_external_access = true", "INSTALL httpfs"):
        with pytest.raises(duckdb.Error):
            con.execute(query)
    check_read_only("SELECT 1; EXPLAIN SELECT 1; DESCRIBE raw_images; explain analyze SELECT 2")
    lake_file = home.path("lake", "engagement_events.parquet")
    for query, verb in (("COPY raw_images TO 'x.parquet'", "COPY"), ("SELECT 1; ATTACH 'a.db'", "ATTACH"),
                        ("CREATE TABLE t (a INT)", "CREATE"), ("install httpfs", "INSTALL"),
                        # EXPLAIN ANALYZE runs what it explains: here a write into the lake
                        (f"EXPLAIN ANALYZE COPY (SELECT 'x' AS evil) TO '{lake_file}' (FORMAT parquet)", "COPY"),
                        ("/* c */ EXPLAIN -- c\n ANALYSE DELETE FROM t", "DELETE")):
        with pytest.raises(ValueError, match=f"^{verb} statements change things; lensless sql only reads"):
            check_read_only(query)


def test_what_another_process_wrote_to_a_bucket_is_seen_at_once(monkeypatch):
    """s3fs keeps a folder's listing forever unless told not to; a partition or a pointer
    record written by another process (here: boto3, not this process's s3fs) must show up in
    the next read all the same: they tell a batch which images another batch ingested
    meanwhile, and every process which model is current."""
    import io
    import os
    import uuid

    from tests.servers import ServerMissing, s3_server

    try:
        server = s3_server()
        env = server.__enter__()
    except ServerMissing as e:
        if os.environ.get("LENSLESS_REQUIRE_SERVERS") == "1":
            pytest.fail(f"integration servers required here: {e}")
        pytest.skip(str(e))
    try:
        import boto3

        for k, v in env.items():
            monkeypatch.setenv(k, v)
        prefix = f"lake-{uuid.uuid4().hex}"
        home = Home.at(f"s3://lensless/{prefix}")
        write_table(home, "raw_images", rows("a", 2), "a")
        assert table_partitions(home, "raw_images") == ["a"]  # the listing is now in s3fs's cache
        data = io.BytesIO()
        rows("b", 1).write_parquet(data)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").put_object(
            Bucket="lensless", Key=f"{prefix}/lake/raw_images/b.parquet", Body=data.getvalue())
        assert table_partitions(home, "raw_images") == ["a", "b"]
        assert read_table(home, "raw_images")["image_id"].to_list() == ["a0", "a1", "b0"]
        log = home.path("models", "gutted_reranker", "pointers")
        append_record(log, {"version": "v1"})
        assert [r["version"] for r in read_records(log)] == ["v1"]
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").put_object(
            Bucket="lensless", Key=f"{prefix}/models/gutted_reranker/pointers/99999999999999999999-1-x.json",
            Body=b'{"version": "v2"}')
        assert [r["version"] for r in read_records(log)] == ["v1", "v2"]
    finally:
        server.__exit__(None, None, None)


@pytest.mark.parametrize("folder", ["it's home", "run[1]", "a*b?"])
def test_the_lake_is_queried_whatever_characters_its_home_path_holds(tmp_path, folder):
    """DuckDB reads a quoted path as SQL and a glob pattern as a pattern: the views name files."""
    home = Home.at(tmp_path / folder)
    write_table(home, "raw_images", rows("a", 2), "a")
    write_table(home, "raw_images", rows("b", 1), "b")
    for read_only in (False, True):
        assert connect(home, read_only=read_only).execute("SELECT count(*) FROM raw_images").fetchall() == [(3,)]


def test_a_read_only_connection_to_a_home_on_an_object_store_reads_its_lake_only():
    """DuckDB names fsspec files memory:///x/... where the home says memory://x/...: both
    spellings of the lake are allowed, nothing else."""
    import uuid

    import duckdb

    root = f"memory://q-{uuid.uuid4().hex}"
    home = Home.at(f"{root}/home")
    write_table(home, "raw_images", rows("a", 2), "a")
    Home.at(f"{root}/other").path("secret.txt").write_text("secret")
    con = connect(home, read_only=True)
    assert con.execute("SELECT count(*) FROM raw_images").fetchall() == [(2,)]
    for outside in (f"{root}/other/secret.txt", f"memory:///{root.removeprefix('memory://')}/other/secret.txt"):
        with pytest.raises(duckdb.Error):
            con.execute(f"SELECT * FROM read_text('{outside}')").fetchall()
