"""Crash-safe writes and streamed reads of the lake."""

import numpy as np
import polars as pl
import pytest

from assets.storage import (
    NpyWriter,
    iter_npy_rows,
    read_npy,
    read_parquet,
    write_npy,
    write_parquet,
)


def test_iter_npy_rows_equals_full_read(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (37, 5, 4, 3), dtype=np.uint8)
    write_npy(arr, tmp_path / "a.npy")
    blocks = list(iter_npy_rows(tmp_path / "a.npy", 8))
    assert [len(b) for b in blocks] == [8, 8, 8, 8, 5]
    assert np.array_equal(np.concatenate(blocks), arr)


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


def test_npy_writer_abort_leaves_old_file(tmp_path):
    path = tmp_path / "p.npy"
    write_npy(np.ones((2, 2), np.uint8), path)
    writer = NpyWriter(path, (3, 2), np.uint8)
    writer.array[:] = 7
    writer.abort()
    assert read_npy(path, mmap=False).tolist() == [[1, 1], [1, 1]]
    writer = NpyWriter(path, (3, 2), np.uint8)
    writer.array[:] = 7
    writer.close()
    assert read_npy(path).shape == (3, 2)
