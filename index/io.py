"""Crash-safe index files.

``write_index_atomic`` never leaves a half-written index at ``path``: it writes a temp file
in the same directory (same filesystem, so the rename is atomic), fsyncs it, ``os.replace``s
it over the old file and fsyncs the directory. A reader that has the old file mmapped keeps
its (unlinked) inode and is not disturbed.

``index_to_bytes`` / ``index_from_bytes`` are the same files as bytes, for object stores.

``read_index`` modes: mmap=True maps the codes instead of loading them (IVF inverted lists
via IO_FLAG_MMAP, flat codes via IO_FLAG_MMAP_IFC), read-only; mmap=False loads into RAM
and the result can be added to. Adding to an mmapped index aborts the process inside faiss, so
such indexes are remembered (``is_read_only``) and ``build.add_vectors`` refuses them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref

import faiss

from .gpu import index_to_cpu

LOG = logging.getLogger(__name__)
# faiss >= 1.12 forbids new attributes on index objects, so remember mmapped ones here
_READ_ONLY: weakref.WeakSet = weakref.WeakSet()

# tried in order; faiss rejects a flag set it cannot honour for that index type
_MMAP_FLAGS = (
    ("mmap_ifc", faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY),
    ("mmap_ivf", faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY),
    ("mmap_ifc_only", faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY),
)


def write_index_atomic(index: faiss.Index, path: str | os.PathLike) -> str:
    """Write ``index`` to ``path`` atomically (GPU indexes are copied to CPU first)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        faiss.write_index(index_to_cpu(index), tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; readers (webserver, workers) need r
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return path


def read_index(path: str | os.PathLike, mmap: bool = True) -> faiss.Index:
    """Read an index; mmap=True maps it read-only where faiss supports it, else loads it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no index at {path!r}")
    if mmap:
        for name, flags in _MMAP_FLAGS:
            try:
                index = faiss.read_index(path, flags)
            except RuntimeError as e:
                LOG.debug("read_index %s with %s failed: %s", path, name, e)
                continue
            _READ_ONLY.add(index)
            return index
        LOG.info("faiss cannot mmap %s; loading it into RAM", path)
    return faiss.read_index(path)


def index_to_bytes(index: faiss.Index) -> bytes:
    """The index serialised as faiss writes it to a file (GPU indexes copied to CPU first),
    for stores that take bytes rather than a path."""
    import numpy as np

    return np.asarray(faiss.serialize_index(index_to_cpu(index))).tobytes()


def index_from_bytes(data: bytes) -> faiss.Index:
    """An index from `index_to_bytes` output (loaded into RAM, so it can be added to)."""
    import numpy as np

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def is_read_only(index: faiss.Index) -> bool:
    """True for an index returned by read_index(mmap=True): search only, no adds."""
    return index in _READ_ONLY


def _fsync_dir(directory: str) -> None:
    """Persist the rename itself; not every platform lets you open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
