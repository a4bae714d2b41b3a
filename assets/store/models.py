"""Versioned model directories under `<home>/models/<kind>/<version>/`. No Dagster.

A version is a short hash of the checkpoint's bytes, so the same weights always get the
same version (and Dagster data versions follow it). `<kind>/pointers.json` records which
version is current and the history of pointers (`set_current` appends), which is what
champion promotion and rollback use. Checkpoints are written with local files (torch and
safetensors write paths), under `Home.local_dir`.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from assets.store.files import Home, read_json, write_json


def kind_root(home: Home, kind: str) -> Path:
    """`<home>/models/<kind>`."""
    return home.local_dir("models", kind)


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def save_version(home: Home, kind: str, write: Callable[[Path], object]) -> str:
    """Call `write(tmp_dir)`, then move it to `<kind>/<hash>/`; returns the version."""
    root = kind_root(home, kind)
    tmp = root / f".staging-{datetime.now(timezone.utc).strftime('%Y%m%d%H%M%S%f')}"
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        version = _digest(tmp)
        final = root / version
        if final.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def version_dir(home: Home, kind: str, version: str) -> Path:
    """The directory of one version; raises naming the known versions when missing."""
    path = kind_root(home, kind) / version
    if not path.is_dir():
        known = sorted(p.name for p in kind_root(home, kind).glob("*") if p.is_dir() and not p.name.startswith("."))
        raise FileNotFoundError(f"no {kind} version {version!r}; known: {', '.join(known) or '(none)'}")
    return path


def pointers(home: Home, kind: str) -> dict:
    """{"current": version | None, "history": [{"version", "at", "reason"}, ...]}."""
    path = kind_root(home, kind) / "pointers.json"
    return read_json(path) if path.exists() else {"current": None, "history": []}


def set_current(home: Home, kind: str, version: str, reason: str = "", versions_of: str | None = None) -> dict:
    """Point `<kind>` at `version` (of `versions_of`, default `kind`), append to its history;
    returns the new pointers."""
    version_dir(home, versions_of or kind, version)
    state = pointers(home, kind)
    state["current"] = version
    state["history"].append({"version": version, "at": datetime.now(timezone.utc).isoformat(), "reason": reason})
    write_json(state, kind_root(home, kind) / "pointers.json")
    return state


def current_dir(home: Home, kind: str, versions_of: str | None = None) -> Path:
    """The current version's directory; raises if nothing was trained yet."""
    version = pointers(home, kind)["current"]
    if version is None:
        raise FileNotFoundError(f"no current {kind}: materialise {kind} first")
    return version_dir(home, versions_of or kind, version)
