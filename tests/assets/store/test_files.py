"""Crash-safe writes and streamed reads of the lake."""


import polars as pl
import pytest

from assets.store.files import Home, read_parquet, write_parquet


def test_failed_parquet_write_keeps_previous_file(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pl.DataFrame({"a": [1, 2]}), path)

    class Boom(pl.DataFrame):
        def write_parquet(self, f, *a, **k):
            f.write(b"partial garbage")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_parquet(Boom({"a": [3]}), path)
    assert read_parquet(path)["a"].to_list() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"], "temporary file left behind"


def test_home_relative_names_paths_inside_the_home_only(tmp_path):
    home = Home.at(tmp_path / "home")
    assert home.relative(str(tmp_path / "home" / "sources" / "demo")) == "$LENSLESS_HOME/sources/demo"
    assert home.relative(str(tmp_path / "home")) == "$LENSLESS_HOME"
    assert home.relative(str(tmp_path / "homework" / "a")) == str(tmp_path / "homework" / "a")  # a sibling, not inside
    assert Home.at("s3://bucket/home").relative("s3://bucket/home/sources/x") == "$LENSLESS_HOME/sources/x"


def test_a_damaged_parquet_file_is_named(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pl.DataFrame({"a": list(range(100))}), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"t\.parquet is not a readable Parquet file .*rematerialise"):
        read_parquet(path)
    with pytest.raises(FileNotFoundError):  # a missing file stays what it is
        read_parquet(tmp_path / "missing.parquet")
