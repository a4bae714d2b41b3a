"""Versioned model directories under `<home>/models/<kind>/<version>/`. No Dagster.

A version is a short hash of the checkpoint's bytes, so the same weights always get the
same version (and Dagster data versions follow it). Checkpoints are written by torch and
safetensors, which need a local folder: `save_version` has them write into a local staging
folder, then moves it into place (a local home: one rename) or uploads its files followed by
`files.json`, the list that marks the version complete (an object store). `version_dir`
returns a local folder to load from: the version itself on a local home, else a copy fetched
once into `Home.cache` (a version never changes, so the copy never goes stale).

Which version is current is the append-only log `<kind>/pointers/` (`set_current` adds a
record; the last one wins), which is what champion promotion and rollback use; concurrent
promotions on two machines both land in the history.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from upath import UPath

from assets.store.files import (
    Home,
    append_record,
    download_tree,
    read_json,
    read_records,
    upload_tree,
    write_json,
)

MANIFEST = "files.json"  # written last: a version without it is incomplete (object stores)


def kind_root(home: Home, kind: str) -> UPath:
    """`<home>/models/<kind>`."""
    return home.path("models", kind)


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def save_version(home: Home, kind: str, write: Callable[[Path], object]) -> str:
    """Call `write(local_dir)`, then store the folder as `<kind>/<hash>/`; returns the version."""
    staging_parent = home.cache("models", kind)
    staging_parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=staging_parent, prefix=".staging-"))
    try:
        write(tmp)
        version = _digest(tmp)
        if not _complete(home, kind, version):
            if home.local:
                try:
                    tmp.rename(home.local_dir("models", kind, version))
                except OSError:  # the same weights were saved by another process meanwhile
                    if not _complete(home, kind, version):
                        raise
            else:
                upload_tree(tmp, kind_root(home, kind) / version)
                write_json(_files(tmp), kind_root(home, kind) / version / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version


def _complete(home: Home, kind: str, version: str) -> bool:
    path = kind_root(home, kind) / version
    return path.is_dir() if home.local else (path / MANIFEST).exists()


def _require(home: Home, kind: str, version: str) -> None:
    """FileNotFoundError naming the known versions when `version` of `kind` does not exist."""
    if not _complete(home, kind, version):
        raise FileNotFoundError(f"no {kind} version {version!r}; known: "
                                f"{', '.join(known_versions(home, kind)) or '(none)'}")


def known_versions(home: Home, kind: str) -> list[str]:
    """The complete versions of `kind`, sorted by name."""
    root = kind_root(home, kind)
    if not root.exists():
        return []
    names = [p.name for p in root.iterdir() if not p.name.startswith(".") and p.name != "pointers"]
    return sorted(n for n in names if _complete(home, kind, n))


def version_dir(home: Home, kind: str, version: str) -> Path:
    """A local folder holding one version (fetched into the cache for a remote home); raises
    naming the known versions when it does not exist."""
    _require(home, kind, version)
    if home.local:
        return home.local_dir("models", kind, version)
    remote = kind_root(home, kind) / version
    return download_tree(remote, read_json(remote / MANIFEST), home.cache("models", kind, version))


def pointers(home: Home, kind: str) -> dict:
    """{"current": version | None, "history": [{"version", "at", "reason"}, ...]}: the log's
    records oldest first (after those of a `pointers.json` from before the log)."""
    old = kind_root(home, kind) / "pointers.json"
    history = read_json(old)["history"] if old.exists() else []
    history += read_records(kind_root(home, kind) / "pointers")
    return {"current": history[-1]["version"] if history else None, "history": history}


def set_current(home: Home, kind: str, version: str, reason: str = "", versions_of: str | None = None) -> dict:
    """Point `<kind>` at `version` (of `versions_of`, default `kind`), appending to its
    history; returns the new pointers."""
    _require(home, versions_of or kind, version)
    append_record(kind_root(home, kind) / "pointers",
                  {"version": version, "at": datetime.now(timezone.utc).isoformat(), "reason": reason})
    return pointers(home, kind)


def current_dir(home: Home, kind: str, versions_of: str | None = None) -> Path:
    """The current version's local folder; raises if nothing was trained yet."""
    version = pointers(home, kind)["current"]
    if version is None:
        raise FileNotFoundError(f"no current {kind}: materialise {kind} first")
    return version_dir(home, versions_of or kind, version)
