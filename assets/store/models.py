"""Versioned model directories under `<home>/models/<kind>/<version>/`. No Dagster.

A version is a short hash of the checkpoint's bytes, so the same weights always get the
same version (and Dagster data versions follow it). Checkpoints are written by torch and
safetensors, which need a local folder: `save_version` has them write into a local staging
folder, then moves it into place (a local home: one rename) or uploads its files followed by
`files.json`, the list that marks the version complete (an object store). `version_dir`
returns a local folder to load from: the version itself on a local home, else a copy fetched
once into `Home.cache` (a version never changes, so the copy never goes stale).

A training run saves its progress in `<home>/training/<kind>/` (`progress_file`), so the
next run of a killed one resumes it; the asset clears it once the model version is saved.

Which version is current is the append-only log `<kind>/pointers/`, which is what champion
promotion and rollback use. `set_current` writes the log's next record, `seq-<n>.json`, only
if no one else wrote record n first (an exclusive create: a hard link locally, a conditional
PUT on an object store), naming the version it replaces (`previous`). A writer that loses
that race, or whose decision was based on a version that is no longer current, changes
nothing and raises `PointerMoved`: two runs promoting at once never overwrite each other
silently. Records from before the numbering (named by time) come first and always count.
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
    download_tree,
    read_json,
    read_records,
    upload_tree,
    write_bytes,
    write_json,
)
from models.resume import ProgressFile

MANIFEST = "files.json"  # written last: a version without it is incomplete (object stores)
PROGRESS = "progress.safetensors"  # a training run's saved progress, under <home>/training/<kind>/


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


def progress_file(home: Home, kind: str, code_version: str) -> ProgressFile:
    """Where a training run of `kind` saves its progress, so that the next run resumes one
    that was killed: `<home>/training/<kind>/progress.safetensors`, resumed only by the same
    `code_version` of the asset. For a home on object storage the trainer writes a local
    copy in the cache, uploaded after each save (and fetched here first), so a run on
    another machine resumes it too."""
    local = home.cache("training", kind) / PROGRESS
    if home.local:
        return ProgressFile(local, identity=code_version)
    remote = home.path("training", kind, PROGRESS)
    local.parent.mkdir(parents=True, exist_ok=True)
    if remote.exists():
        write_bytes(remote.read_bytes(), local)
    else:
        local.unlink(missing_ok=True)  # the home's copy is the one that counts
    return ProgressFile(local, identity=code_version,
                        after_save=lambda path: write_bytes(path.read_bytes(), remote, fsync=False),
                        after_clear=lambda: remote.unlink(missing_ok=True))


class PointerMoved(RuntimeError):
    """Another writer moved a pointer between the read a change was based on and its write."""


_READ = object()  # set_current's default `expect`: the current version as it reads it


def pointers(home: Home, kind: str) -> dict:
    """{"current": version | None, "history": [{"version", "at", "reason", ...}, ...],
    "records": n}: the log's records oldest first (after those of a `pointers.json` from
    before the log); `records` counts the log's own, so the next one is number n."""
    old = kind_root(home, kind) / "pointers.json"
    history = read_json(old)["history"] if old.exists() else []
    records = read_records(kind_root(home, kind) / "pointers")
    history += records
    return {"current": history[-1]["version"] if history else None, "history": history, "records": len(records)}


def set_current(home: Home, kind: str, version: str, reason: str = "", versions_of: str | None = None,
                expect=_READ) -> dict:
    """Point `<kind>` at `version` (of `versions_of`, default `kind`), replacing `expect` (the
    version the caller's decision was based on; default: the current one as read now);
    returns the new pointers. Raises `PointerMoved`, changing nothing, when the pointer is
    no longer `expect` or another writer's record takes the next number first."""
    _require(home, versions_of or kind, version)
    state = pointers(home, kind)
    expect = state["current"] if expect is _READ else expect
    if state["current"] != expect:
        raise PointerMoved(f"{kind} is {state['current']}, not {expect} as when this change was decided; "
                           f"nothing changed: decide again (rerun, or `lensless promote`)")
    record = {"version": version, "at": datetime.now(timezone.utc).isoformat(), "reason": reason, "previous": expect}
    try:
        write_json(record, kind_root(home, kind) / "pointers" / f"seq-{state['records']:010d}.json", exclusive=True)
    except FileExistsError:
        raise PointerMoved(f"another writer moved {kind} to {pointers(home, kind)['current']} while this one "
                           f"set it to {version}; nothing changed: decide again (rerun, or `lensless promote`)") from None
    return pointers(home, kind)


def current_dir(home: Home, kind: str, versions_of: str | None = None) -> Path:
    """The current version's local folder; raises if nothing was trained yet."""
    version = pointers(home, kind)["current"]
    if version is None:
        raise FileNotFoundError(f"no current {kind}: materialise {kind} first")
    return version_dir(home, versions_of or kind, version)
