"""The home: where lensless keeps what it writes, and the one crash-safe write. No Dagster.

`Home` is the root of everything the pipeline writes (`$LENSLESS_HOME`, default `.lensless/`
in the working directory): `dagster/` (the instance), `lake/` (tables and pixels, see
`store.lake`), `models/`, `indexes/`, `reports/` and `sources/` (rendered demo images).
Every Dagster-free helper takes a `Home` as its first argument, so a test or a deployment
passes another one instead of setting an environment variable; assets get theirs from the
`lensless_home` resource (`store.resource`).

Paths are universal-pathlib `UPath`s, so `LENSLESS_HOME=s3://bucket/lensless` addresses an
object store, and every module reads and writes through them: a second machine with the same
`LENSLESS_HOME` sees the same lake, models, index and reports. `atomic_write` is the one
write: locally it goes to a temporary file in the same directory, is fsynced and moved into
place with `os.replace`; object stores get a single PUT, which is atomic per object.

Libraries that need a local path (torch and safetensors checkpoints, the demo renderer) work in
`Home.cache(...)`: the home itself when it is local, else a local cache folder
(`$LENSLESS_CACHE`, default `~/.cache/lensless/<home's URL as a folder name>`), with
`upload_tree` / `download_tree` moving whole folders. Shared state that many writers update
(registries, model pointers) is an append-only log (`append_record`, `read_records`): one new
object per change, so concurrent writers never overwrite each other, on a disk or in a bucket.
Commands that write the lake take `store.lock.writer_lock`, which works for both kinds of home.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from upath import UPath

HOME_ENV = "LENSLESS_HOME"
DEFAULT_HOME = ".lensless"
CACHE_ENV = "LENSLESS_CACHE"


def is_local(path: UPath | str) -> bool:
    """True when `path` is on the local filesystem (atomic rename and mmap are available)."""
    return UPath(path).protocol in ("", "file", "local")


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` made absolute, when it is a folder or can be made one (its nearest existing part
    is a folder); ValueError naming `what` (where the path came from) when that part is a file
    (a dangling link counts as one) or cannot be looked at."""
    raw = os.fspath(path)
    if UPath(raw).protocol in ("file", "local"):
        raw = UPath(raw).path  # file:///x -> /x
    folder = Path(os.path.abspath(os.path.expanduser(raw)))
    try:
        existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
        is_dir = existing.is_dir()
    except OSError as e:
        raise ValueError(f"{what} {folder} cannot be used: {e.strerror or e}") from e
    if not is_dir:
        kind = "a link to nothing" if existing.is_symlink() else "a file"
        where = f"is {kind}" if existing == folder else f"lies under {existing}, which is {kind}"
        raise ValueError(f"{what} {folder} {where}: point it at a folder (one that does not exist yet is made)")
    return folder


@dataclass(frozen=True)
class Home:
    """The root of everything lensless writes. `Home.at(path)` for a given place,
    `Home.from_env()` for `$LENSLESS_HOME` (else `./.lensless`)."""

    root: UPath

    @classmethod
    def at(cls, path: str | os.PathLike, what: str = "the home") -> Home:
        """A home at `path`: a local folder (made absolute; `what` names it when it is a file)
        or an fsspec URL."""
        raw = os.fspath(path)
        if is_local(raw):
            return cls(UPath(check_folder(raw, what)))
        # no listing cache: s3fs and gcsfs would otherwise keep a folder's listing for the life
        # of the process, and never see a partition, pointer record or lock lease that another
        # process wrote since
        return cls(UPath(raw, use_listings_cache=False))

    @classmethod
    def from_env(cls) -> Home:
        """`$LENSLESS_HOME`, else `./.lensless`."""
        return cls.at(os.environ.get(HOME_ENV) or DEFAULT_HOME, what=HOME_ENV)

    @property
    def local(self) -> bool:
        """True when the home is a local folder."""
        return is_local(self.root)

    def path(self, *parts: str) -> UPath:
        """`<home>/<parts...>`."""
        return self.root.joinpath(*parts)

    def relative(self, path: str) -> str:
        """`path` as `$LENSLESS_HOME/...` when it lies in the home (what a report prints, so a
        moved or copied home still reads right), else unchanged."""
        root = str(self.root).rstrip("/")
        return "$LENSLESS_HOME" + path[len(root):] if path == root or path.startswith(root + "/") else path

    def local_dir(self, *parts: str) -> Path:
        """`<home>/<parts...>` as a local `Path`; only for a local home (ValueError otherwise:
        use `path` to read and write, or `cache` for a library that needs a local folder)."""
        if not self.local:
            raise ValueError(f"{self.root} is not a local folder; {'/'.join(parts)} has no local path")
        return Path(self.root.path).joinpath(*parts)

    def cache(self, *parts: str) -> Path:
        """A local folder standing for `<home>/<parts...>`: the home's own folder when it is
        local, else `$LENSLESS_CACHE/<home URL as a name>/<parts...>` (default cache
        `~/.cache/lensless`). What is cached must be immutable or refreshed by the caller."""
        if self.local:
            return self.local_dir(*parts)
        base = Path(os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/lensless"))
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(self.root)).strip("_")
        return base.joinpath(name, *parts)


def temporary_beside(local: Path) -> tuple[int, str]:
    """A new temporary file beside `local`, named `.<name>.<random>.tmp` (what
    `remove_temporaries` looks for): (fd, path)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp")


def atomic_write(path: UPath | str | os.PathLike, write: Callable[[Any], None], fsync: bool = True,
                 exclusive: bool = False) -> UPath:
    """Call `write(fileobj)` so that readers see either the old file or the complete new one.

    `fsync=False` skips the flush to disk, for files that can be made again (rendered demo
    images): a crash may then lose the new file, but never leaves a partial one.
    `exclusive=True` creates the file only if it does not exist (a hard link locally, a
    conditional PUT on an object store) and raises `FileExistsError` otherwise: of several
    writers of one name, exactly one wins."""
    path = UPath(path)
    if not is_local(path):
        with path.open("xb" if exclusive else "wb") as f:
            write(f)
        return path
    local = Path(path.path)
    fd, tmp = temporary_beside(local)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; readers (webserver, workers) need r
        if exclusive:
            os.link(tmp, local)  # fails if the name exists; readers never see a partial file
            os.unlink(tmp)
        else:
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


def write_bytes(data: bytes, path: UPath | str | os.PathLike, fsync: bool = True, exclusive: bool = False) -> UPath:
    """Write bytes atomically (`exclusive`: only if the file does not exist, see `atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), fsync, exclusive)


def write_parquet(df: pl.DataFrame, path: UPath | str) -> UPath:
    """Write a polars frame as Parquet, atomically."""
    return atomic_write(path, lambda f: df.write_parquet(f))


def read_parquet(path: UPath | str) -> pl.DataFrame:
    """Read a Parquet file written by `write_parquet`; a damaged one raises naming the file."""
    path = UPath(path)
    try:
        if is_local(path):
            return pl.read_parquet(path.path)
        with path.open("rb") as f:
            return pl.read_parquet(io.BytesIO(f.read()))
    except pl.exceptions.PolarsError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path} is not a readable Parquet file ({first}): rematerialise the asset that "
                         "writes it, or restore the file") from e


def write_json(obj: Any, path: UPath | str | os.PathLike, exclusive: bool = False) -> UPath:
    """Write JSON atomically (`exclusive`: only if the file does not exist, see `atomic_write`)."""
    return write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), path, exclusive=exclusive)


def read_json(path: UPath | str | os.PathLike) -> Any:
    """Read a JSON file; a damaged one raises naming the file."""
    path = UPath(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def append_record(folder: UPath, record: dict) -> UPath:
    """Add `record` to the append-only log in `folder`: one new JSON object, named by time,
    process and a random suffix, so concurrent writers on any store never lose an update."""
    name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    return write_json(record, UPath(folder) / name)


def read_records(folder: UPath) -> list[dict]:
    """The records of the append-only log in `folder`, oldest first ([] when there is none)."""
    folder = UPath(folder)
    if not folder.exists():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
    return [read_json(folder / name) for name in names]


def upload_tree(local: Path, remote: UPath, skip_same_size: bool = False, exclude: set[str] = frozenset()) -> int:
    """Copy every file below the local folder `local` to `remote` (one PUT each, or an atomic
    local write), but those whose relative path is in `exclude`; `skip_same_size` leaves
    files that already exist there with the same size. Returns how many files were written."""
    written = 0
    for f in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        if f.relative_to(local).as_posix() in exclude:
            continue
        target = UPath(remote).joinpath(*f.relative_to(local).parts)
        if skip_same_size and target.exists() and target.stat().st_size == f.stat().st_size:
            continue
        write_bytes(f.read_bytes(), target, fsync=False)
        written += 1
    return written


def download_tree(remote: UPath, names: list[str], local: Path) -> Path:
    """Fetch the files `names` (relative, `/`-separated) of `remote` into the local folder
    `local`, all or nothing: they land in a staging folder that is renamed into place."""
    local = Path(local)
    if local.is_dir():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp"))
    try:
        for name in names:
            target = staging.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(UPath(remote).joinpath(*name.split("/")).read_bytes())
        try:
            staging.rename(local)
        except OSError:  # another process fetched it first
            if not local.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local
