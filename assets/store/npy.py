"""`.npy` files in the home: pixels and embeddings, written row by row and read in blocks. No Dagster.

`NpyWriter` appends rows to a new `.npy` without holding them in memory and moves it into
place when closed (locally with direct IO, see its doc); `write_npy` writes one array;
`read_npy` loads or memory-maps one; `iter_npy_rows` streams one in blocks of rows. All of
them take a path in the home (`store.files.Home`), local or on an object store.
"""

from __future__ import annotations

import fcntl
import io
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from upath import UPath

from assets.store.files import atomic_write, is_local, temporary_beside, write_bytes


def _npy_header(shape: tuple[int, ...], dtype: np.dtype, length: int | None = None) -> bytes:
    """A version 1.0 `.npy` header for a C-ordered array, space-padded to `length` bytes
    (default: the next multiple of 64, as numpy writes it)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    size = 10 + len(text) + 1  # magic + version + length field, the dict, the newline
    length = length or -(-size // 64) * 64
    if length < size or length - 10 > 0xFFFF:
        raise ValueError(f"npy header of {size} bytes does not fit in {length}")
    body = text.ljust(length - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + (length - 10).to_bytes(2, "little") + body.encode("latin1")


class NpyWriter:
    """Append rows to an `.npy` file of at most `shape[0]` rows without holding them in memory.

    `append(row)` adds one row; `close()` writes the header for the rows actually appended,
    fsyncs and moves the file into place; `abort()` drops it and leaves any previous file.
    Locally, rows are gathered in a page-aligned block of `BLOCK_BYTES`, and a thread writes
    each full block while the next one fills, with direct IO (`O_DIRECT`) where the
    filesystem allows it: the bytes go from the block to the disk without passing through the
    page cache, whose dirty-page throttling can cap a bulk write far below the disk's speed
    (bench/ingest.py, "write"). Elsewhere the blocks are plain sequential writes. Remotely, rows are buffered and
    uploaded once by `atomic_write`.
    """

    BLOCK_BYTES = 8 << 20  # a multiple of any alignment O_DIRECT asks for

    def __init__(self, path: UPath | str, shape: tuple[int, ...], dtype=np.uint8, direct: bool = True):
        """`direct=False`: write through the page cache even where direct IO is allowed."""
        self.path = UPath(path)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.rows = 0
        self._header_len = len(_npy_header(self.shape, self.dtype))
        self._fd = self._tmp = None
        if is_local(self.path):
            self._fd, self._tmp = temporary_beside(Path(self.path.path))
            self.direct = direct and _set_direct(self._fd, True)  # whether blocks bypass the page cache
            # two blocks: one fills while the other is written by a thread (os.write releases the GIL)
            self._blocks = [mmap.mmap(-1, self.BLOCK_BYTES) for _ in range(2)]  # page-aligned
            self._block, self._filled = self._blocks[0], 0
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="npy-writer")
            self._writing: Future | None = None
        else:
            self.direct = False
            self._file = io.BytesIO()
        self._put(b"\0" * self._header_len)  # the real header is written by close()

    def append(self, row: np.ndarray) -> None:
        """Write the next row (shape `shape[1:]`, cast to the dtype only when it differs)."""
        row = np.ascontiguousarray(row, dtype=self.dtype)
        if row.shape != self.shape[1:]:
            raise ValueError(f"row of shape {row.shape}, expected {self.shape[1:]}")
        if self.rows >= self.shape[0]:
            raise ValueError(f"{self.path} is full: {self.shape[0]} rows")
        self._put(memoryview(row).cast("B"))
        self.rows += 1

    def _put(self, data) -> None:
        """Copy bytes into the block, writing the block out each time it fills."""
        if self._tmp is None:
            self._file.write(data)
            return
        data = memoryview(data)
        while data:
            n = min(len(data), self.BLOCK_BYTES - self._filled)
            self._block[self._filled:self._filled + n] = data[:n]
            self._filled += n
            data = data[n:]
            if self._filled == self.BLOCK_BYTES:
                self._wait()
                self._writing = self._writer.submit(_write_all, self._fd, memoryview(self._block))
                self._block = self._blocks[self._blocks[0] is self._block]
                self._filled = 0

    def _wait(self) -> None:
        """Wait for the block being written (and raise its error, if any)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def close(self) -> UPath:
        """Write the header for the rows appended and move the finished file into place."""
        header = _npy_header((self.rows, *self.shape[1:]), self.dtype, self._header_len)
        if self._tmp is None:
            self._file.seek(0)
            self._file.write(header)
            return write_bytes(self._file.getvalue(), self.path)
        try:
            self._wait()
            _set_direct(self._fd, False)  # the last, partial block and the header are unaligned
            _write_all(self._fd, memoryview(self._block)[:self._filled])
            os.pwrite(self._fd, header, 0)
            os.fsync(self._fd)
            os.fchmod(self._fd, 0o644)  # mkstemp makes 0600; readers (webserver, workers) need r
        except BaseException:
            self.abort()
            raise
        self._release()
        os.replace(self._tmp, self.path.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file; the previous file (if any) stays untouched."""
        if self._tmp is None:
            self._file.close()
            return
        self._release()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def _release(self) -> None:
        if self._fd is not None:
            self._writer.shutdown(wait=True)  # no write may still use the fd or a block
            os.close(self._fd)
            self._fd = None
            for block in self._blocks:
                block.close()


def _set_direct(fd: int, on: bool) -> bool:
    """Turn direct IO on or off for `fd`; False where the platform or the filesystem refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return on


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def write_npy(arr: np.ndarray, path: UPath | str) -> UPath:
    """Write one array as `.npy`, atomically."""
    return atomic_write(path, lambda f: np.save(f, arr))


def read_npy(path: UPath | str, mmap: bool = True) -> np.ndarray:
    """Read an `.npy` file; memory-mapped when local and `mmap` is set."""
    path = UPath(path)
    if is_local(path):
        return np.load(path.path, mmap_mode="r" if mmap else None, allow_pickle=False)
    with path.open("rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def iter_npy_rows(path: UPath | str, rows: int):
    """Yield consecutive blocks of at most `rows` rows of an `.npy` file, read with plain file
    reads (no memory map), so resident memory stays at one block whatever the file size."""
    path = UPath(path)
    with path.open("rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        assert not fortran, f"{path} is Fortran-ordered; lensless writes C order"
        row_shape = shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            buf = f.read(n * row_bytes)
            yield np.frombuffer(buf, dtype=dtype).reshape(n, *row_shape)
