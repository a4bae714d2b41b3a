"""The home: where lensless keeps what it writes, and the one crash-safe write. No Dagster.

`Home` is the root of everything the pipeline writes (`$LENSLESS_HOME`, default `.lensless/`
in the working directory): `dagster/` (the instance), `lake/` (tables and pixels, see
`store.lake`), `models/`, `indexes/`, `reports/` and `sources/` (rendered demo images).
Every Dagster-free helper takes a `Home` as its first argument, so a test or a deployment
passes another one instead of setting an environment variable; assets get theirs from the
`lensless_home` resource (`store.resource`).

Paths are universal-pathlib `UPath`s, so `LENSLESS_HOME=s3://bucket/lensless` addresses an
object store. `atomic_write` is the one write: locally it goes to a temporary file in the same
directory, is fsynced and moved into place with `os.replace`; object stores get a single PUT,
which is atomic per object.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from upath import UPath

HOME_ENV = "LENSLESS_HOME"
DEFAULT_HOME = ".lensless"


def is_local(path: UPath | str) -> bool:
    """True when `path` is on the local filesystem (atomic rename and mmap are available)."""
    return UPath(path).protocol in ("", "file", "local")


@dataclass(frozen=True)
class Home:
    """The root of everything lensless writes. `Home.at(path)` for a given place,
    `Home.from_env()` for `$LENSLESS_HOME` (else `./.lensless`)."""

    root: UPath

    @classmethod
    def at(cls, path: str | os.PathLike) -> Home:
        """A home at `path`: a local folder (made absolute) or an fsspec URL."""
        raw = os.fspath(path)
        root = UPath(raw)
        if is_local(root):
            root = UPath(os.path.abspath(os.path.expanduser(raw)))
        return cls(root)

    @classmethod
    def from_env(cls) -> Home:
        """`$LENSLESS_HOME`, else `./.lensless`."""
        return cls.at(os.environ.get(HOME_ENV) or DEFAULT_HOME)

    @property
    def local(self) -> bool:
        """True when the home is a local folder."""
        return is_local(self.root)

    def path(self, *parts: str) -> UPath:
        """`<home>/<parts...>`."""
        return self.root.joinpath(*parts)

    def local_dir(self, *parts: str) -> Path:
        """`<home>/<parts...>` as a local `Path`, for libraries that need one (faiss, torch
        checkpoints, the report's files). Remote homes are not supported there yet: the
        same path is used relative to the working directory."""
        return Path(self.root.path).joinpath(*parts)


@contextmanager
def writer_lock(home: Home, command: str) -> Iterator[None]:
    """Hold the home's single-writer lock (an exclusive `flock` on `<home>/.lock`) while
    `command` writes; a second writer waits, saying who holds it. Readers never take it. The
    kernel drops the lock when its process dies, so a killed command never leaves it behind.
    Remote homes are not locked yet."""
    if not home.local:
        yield
        return
    path = home.local_dir(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another lensless command"
            print(f"lensless {command}: {home.root} is being written by {holder}; waiting for it to finish",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"`lensless {command}` (pid {os.getpid()})")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _temporary(local: Path) -> tuple[int, str]:
    """A new temporary file beside `local`, named `.<name>.<random>.tmp` (what
    `remove_temporaries` looks for): (fd, path)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp")


def atomic_write(path: UPath | str | os.PathLike, write: Callable[[Any], None], fsync: bool = True) -> UPath:
    """Call `write(fileobj)` so that readers see either the old file or the complete new one.

    `fsync=False` skips the flush to disk, for files that can be made again (rendered demo
    images): a crash may then lose the new file, but never leaves a partial one."""
    path = UPath(path)
    if not is_local(path):
        with path.open("wb") as f:
            write(f)
        return path
    local = Path(path.path)
    fd, tmp = _temporary(local)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; readers (webserver, workers) need r
        os.replace(tmp, local)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_temporaries(path: UPath | str | os.PathLike) -> int:
    """Delete what an interrupted write of `path` left behind (`.<name>.*.tmp` beside it);
    returns how many. Call it only when no other writer of `path` can be running."""
    path = UPath(path)
    if not is_local(path):
        return 0  # object stores write in one PUT: nothing is left behind
    local = Path(path.path)
    stale = list(local.parent.glob(f".{local.name}.*.tmp")) if local.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def write_bytes(data: bytes, path: UPath | str | os.PathLike, fsync: bool = True) -> UPath:
    """Write bytes atomically."""
    return atomic_write(path, lambda f: f.write(data), fsync)


def write_parquet(df: pl.DataFrame, path: UPath | str) -> UPath:
    """Write a polars frame as Parquet, atomically."""
    return atomic_write(path, lambda f: df.write_parquet(f))


def read_parquet(path: UPath | str) -> pl.DataFrame:
    """Read a Parquet file written by `write_parquet`."""
    path = UPath(path)
    if is_local(path):
        return pl.read_parquet(path.path)
    with path.open("rb") as f:
        return pl.read_parquet(io.BytesIO(f.read()))


def write_json(obj: Any, path: UPath | str | os.PathLike) -> UPath:
    """Write JSON atomically."""
    return write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), path)


def read_json(path: UPath | str | os.PathLike) -> Any:
    """Read a JSON file; a damaged one raises naming the file."""
    path = UPath(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


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
    Locally, rows go to a temporary file with plain sequential writes (no memory map, so no
    page faults per row). Remotely, rows are buffered and uploaded once by `atomic_write`.
    """

    def __init__(self, path: UPath | str, shape: tuple[int, ...], dtype=np.uint8):
        self.path = UPath(path)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.rows = 0
        self._header_len = len(_npy_header(self.shape, self.dtype))
        if is_local(self.path):
            fd, self._tmp = _temporary(Path(self.path.path))
            self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        else:
            self._tmp = None
            self._file = io.BytesIO()
        self._file.write(b"\0" * self._header_len)  # the real header is written by close()

    def append(self, row: np.ndarray) -> None:
        """Write the next row (shape `shape[1:]`, cast to the dtype only when it differs)."""
        row = np.ascontiguousarray(row, dtype=self.dtype)
        if row.shape != self.shape[1:]:
            raise ValueError(f"row of shape {row.shape}, expected {self.shape[1:]}")
        if self.rows >= self.shape[0]:
            raise ValueError(f"{self.path} is full: {self.shape[0]} rows")
        self._file.write(memoryview(row).cast("B"))
        self.rows += 1

    def close(self) -> UPath:
        """Write the header for the rows appended and move the finished file into place."""
        header = _npy_header((self.rows, *self.shape[1:]), self.dtype, self._header_len)
        self._file.seek(0)
        self._file.write(header)
        if self._tmp is None:
            return write_bytes(self._file.getvalue(), self.path)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file; the previous file (if any) stays untouched."""
        self._file.close()
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)


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
