import os

import faiss
import numpy as np
import pytest

from index.build import add_vectors, build_index
from index.io import is_read_only, read_index, write_index_atomic


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat"])
@pytest.mark.parametrize("mmap", [True, False])
def test_roundtrip(data, tmp_path, factory, mmap):
    index = build_index(data["xb"], data["ids"], factory)
    path = write_index_atomic(index, tmp_path / "a.index")
    back = read_index(path, mmap=mmap)
    np.testing.assert_array_equal(back.search(data["xq"], 5)[1], index.search(data["xq"], 5)[1])
    assert is_read_only(back) == mmap


def test_interrupted_write_keeps_previous_index(data, tmp_path, monkeypatch):
    path = tmp_path / "live.index"
    old = build_index(data["xb"][:1000], data["ids"][:1000], "Flat")
    write_index_atomic(old, path)

    def crash(index, fname):
        with open(fname, "wb") as f:
            f.write(b"garbage, half an index")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    new = build_index(data["xb"], data["ids"], "Flat")
    with pytest.raises(OSError, match="disk full"):
        write_index_atomic(new, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["live.index"], "temp file left behind"
    assert read_index(path, mmap=False).ntotal == 1000


def test_mmapped_index_refuses_adds(data, tmp_path):
    path = write_index_atomic(
        build_index(data["xb"][:100], data["ids"][:100], "Flat"), tmp_path / "x.index"
    )
    with pytest.raises(AssertionError, match="mmap=False"):
        add_vectors(read_index(path, mmap=True), data["xb"][100:110], data["ids"][100:110])
    index = add_vectors(read_index(path, mmap=False), data["xb"][100:110], data["ids"][100:110])
    assert index.ntotal == 110


def test_read_missing_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.index"):
        read_index(tmp_path / "nope.index")
