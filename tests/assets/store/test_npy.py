"""store.npy: row-by-row writes (direct IO and its fallback), atomic replacement, streamed reads."""

import os

import numpy as np
import pytest

from assets.store.npy import NpyWriter, iter_npy_rows, read_npy, write_npy


def test_iter_npy_rows_equals_full_read(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (37, 5, 4, 3), dtype=np.uint8)
    write_npy(arr, tmp_path / "a.npy")
    blocks = list(iter_npy_rows(tmp_path / "a.npy", 8))
    assert [len(b) for b in blocks] == [8, 8, 8, 8, 5]
    assert np.array_equal(np.concatenate(blocks), arr)


def test_npy_writer_abort_leaves_old_file(tmp_path):
    path = tmp_path / "p.npy"
    write_npy(np.ones((2, 2), np.uint8), path)
    writer = NpyWriter(path, (3, 2), np.uint8)
    writer.append(np.full(2, 7))
    writer.abort()
    assert read_npy(path, mmap=False).tolist() == [[1, 1], [1, 1]]
    assert [p.name for p in tmp_path.iterdir()] == ["p.npy"], "temporary file left behind"
    writer = NpyWriter(path, (3, 2), np.uint8)
    for _ in range(3):
        writer.append(np.full(2, 7))
    writer.close()
    assert read_npy(path).tolist() == [[7, 7]] * 3


@pytest.mark.parametrize("rows", [0, 1, 999])
def test_npy_writer_header_matches_rows_written(tmp_path, rows):
    """Fewer rows than planned (rejected files) give a smaller, valid array; np.load agrees."""
    path = tmp_path / "p.npy"
    writer = NpyWriter(path, (1000, 4, 3), np.uint8)
    data = np.random.default_rng(0).integers(0, 255, (rows, 4, 3), dtype=np.uint8)
    for r in data:
        writer.append(r)
    writer.close()
    assert np.array_equal(np.load(path), data)
    assert np.array_equal(read_npy(path), data)
    with pytest.raises(ValueError, match="expected"):
        NpyWriter(tmp_path / "q.npy", (2, 4, 3)).append(np.zeros((4, 4, 3)))


def test_npy_writer_rejects_rows_past_its_shape(tmp_path):
    writer = NpyWriter(tmp_path / "p.npy", (1, 2), np.float32)
    writer.append(np.ones(2))
    with pytest.raises(ValueError, match="full"):
        writer.append(np.ones(2))
    writer.close()
    assert np.load(tmp_path / "p.npy").dtype == np.float32


@pytest.mark.parametrize("direct", [True, False])
def test_npy_writer_blocks_give_the_same_file_with_and_without_direct_io(tmp_path, monkeypatch, direct):
    """Small blocks, rows that straddle them, and a partial last block: the file np.save writes."""
    monkeypatch.setattr(NpyWriter, "BLOCK_BYTES", 4096)
    data = np.random.default_rng(1).integers(0, 255, (50, 10, 10, 3), dtype=np.uint8)  # 300 B rows
    writer = NpyWriter(tmp_path / "p.npy", (60, 10, 10, 3), direct=direct)
    for row in data:
        writer.append(row)
    path = writer.close()
    assert writer.direct is (direct and _direct_io_allowed(tmp_path))
    np.save(tmp_path / "ref.npy", data)
    saved = np.load(tmp_path / "ref.npy")
    assert np.array_equal(np.load(path.path), saved)
    assert oct(os.stat(path.path).st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy", "ref.npy"]


def test_npy_writer_falls_back_where_direct_io_is_refused(tmp_path, monkeypatch):
    """A filesystem that refuses O_DIRECT (fcntl raises EINVAL) gets plain writes, same bytes."""
    import fcntl as fcntl_module

    real = fcntl_module.fcntl

    def refuse_direct(fd, cmd, arg=0):
        if cmd == fcntl_module.F_SETFL and arg & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl_module, "fcntl", refuse_direct)
    writer = NpyWriter(tmp_path / "p.npy", (3, 5000), np.uint8)
    for value in range(3):
        writer.append(np.full(5000, value))
    writer.close()
    assert writer.direct is False
    assert np.load(tmp_path / "p.npy")[:, 0].tolist() == [0, 1, 2]


def _direct_io_allowed(folder) -> bool:
    """Whether the filesystem of `folder` opens files with O_DIRECT (tmpfs, for one, refuses)."""
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except (OSError, AttributeError):
        return False
    finally:
        (folder / "probe").unlink(missing_ok=True)
    return True
