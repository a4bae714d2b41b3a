"""The home's writer lock, on a local disk or an object store. No Dagster.

Commands that write the lake (`lensless ingest`, `run`, `demo`, ...) hold `writer_lock`,
exclusive: a second writer waits, saying who holds it. The steps of runs the UI or the
daemon launches, and the sensor that cuts batches, hold `step_lock`, shared: they wait for a
command and a command waits for them, but they do not wait for each other (each writes its
own partition, or a new version switched to atomically). A thread that holds the exclusive
lock passes its own step locks (a command's in-process runs). Readers never take either.
Where steps must not interleave a short check-then-write (which of a batch's images are
new), they take a `named_lock` of its own in turn.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from upath import UPath

from assets.store.files import Home, write_bytes

LOCK_LEASE_SECONDS = 60.0  # a remote lock not renewed for this long is a dead writer's
TAKEOVER_MARKER_SECONDS = 3600.0  # how long the claim on a dead writer's lease is kept (_take_over)
_HELD = threading.local()  # .homes: the homes whose exclusive lock this thread holds


def _held() -> set[str]:
    if not hasattr(_HELD, "homes"):
        _HELD.homes = set()
    return _HELD.homes


class LockBusy(RuntimeError):
    """A lock asked for without waiting is held by someone else; the message says who."""


@contextmanager
def writer_lock(home: Home, command: str) -> Iterator[None]:
    """Hold the home's single-writer lock while `command` writes; a second writer waits,
    saying who holds it. Readers never take it.

    Locally it is an exclusive `flock` on `<home>/.lock`: the kernel drops it when its
    process dies. On object storage it is the object `<home>/.lock`, created only if absent
    (an exclusive create: `If-None-Match: *` on S3) and renewed by a thread while held; a lock
    not renewed for `LOCK_LEASE_SECONDS` was left by a writer that died, and is taken over."""
    holder = f"`lensless {command}` (pid {os.getpid()} on {socket.gethostname()})"
    with _exclusive(home, holder, command):
        _held().add(str(home.root))
        try:
            yield
        finally:
            _held().discard(str(home.root))


@contextmanager
def step_lock(home: Home, holder: str, wait: bool = True) -> Iterator[None]:
    """Hold the home's lock shared while a run's step (or a sensor tick) named `holder`
    writes; nothing when this thread holds it exclusively. With `wait` False, `LockBusy`
    instead of waiting for a command."""
    if str(home.root) in _held():
        yield
        return
    if not home.local:
        with _object_shared(home, holder, wait):
            yield
        return
    with _flock(home, fcntl.LOCK_SH, holder, wait=wait):
        yield


@contextmanager
def _exclusive(home: Home, holder: str, command: str) -> Iterator[None]:
    if not home.local:
        with _object_lock(home, holder, command):
            yield
        return
    with _flock_named(home, ".lock", holder, f"lensless {command}"):
        yield


@contextmanager
def named_lock(home: Home, name: str, holder: str) -> Iterator[None]:
    """Hold the home's lock `name` exclusively, `<home>/.lock-<name>`, around a short
    check-then-write that steps (which hold the home's lock only shared) must take in turn:
    e.g. deciding which of a batch's images are new. Local: an exclusive `flock`; on object
    storage: a lease object, created only if absent and renewed, as `writer_lock`'s."""
    if home.local:
        with _flock_named(home, f".lock-{name}", holder, holder):
            yield
        return
    with _object_exclusive(home.path(f".lock-{name}"), holder, holder, f"{home.root} is being written by"):
        yield


@contextmanager
def _flock_named(home: Home, file: str, holder: str, who: str) -> Iterator[None]:
    """`flock` `<home>/<file>` exclusively and write `holder` into it while held (waiters
    print it)."""
    with _flock(home, fcntl.LOCK_EX, who, file) as f:
        f.seek(0)
        f.truncate()
        f.write(holder)  # shared holders leave no name: there may be several
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


@contextmanager
def _flock(home: Home, mode: int, who: str, file: str = ".lock", wait: bool = True) -> Iterator[IO[str]]:
    """`flock` `<home>/<file>` in `mode` (LOCK_SH or LOCK_EX) and yield the open file; when it
    is held, wait saying by whom (`who` is the waiter), or with `wait` False raise `LockBusy`."""
    path = home.local_dir(file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            current = f.read().strip() or "another lensless command or Dagster run"  # steps leave no name
            if not wait:
                raise LockBusy(f"{home.root} is being written by {current}") from None
            _say_waiting(home, who, current)
            fcntl.flock(f, mode)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say_waiting(home: Home, who: str, holder: str) -> None:
    print(f"{who}: {home.root} is being written by {holder}; waiting for it to finish",
          file=sys.stderr, flush=True)


def _lease(holder: str) -> bytes:
    return json.dumps({"holder": holder, "expires": time.time() + LOCK_LEASE_SECONDS}).encode()


@contextmanager
def _renewed(path: UPath, holder: str) -> Iterator[None]:
    """Renew the lease object `path` from a thread while the block runs; delete it after."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LOCK_LEASE_SECONDS / 4):
            write_bytes(_lease(holder), path)

    renewer = threading.Thread(target=renew, name="lensless-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        path.unlink(missing_ok=True)


def _live_holder(path: UPath) -> str | None:
    """Who holds the lease object `path`, or None when there is none or it ran out."""
    try:
        current = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):  # none, or being written just now
        return None
    return current["holder"] if current["expires"] >= time.time() else None


def _shared_leases(home: Home) -> list[str]:
    """Holders of the live shared leases under `<home>/.lock-shared/`."""
    folder = home.path(".lock-shared")
    try:
        paths = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # no lease yet (object stores have no empty folders)
        return []
    return [h for h in (_live_holder(p) for p in paths) if h is not None]


@contextmanager
def _object_shared(home: Home, holder: str, wait: bool) -> Iterator[None]:
    """A shared lease `<home>/.lock-shared/<uuid>`, taken only while no exclusive `.lock` is
    live; taken first and checked after, so an exclusive writer that lists the leases after
    creating `.lock` sees it, or it sees that writer's `.lock`."""
    mine = home.path(".lock-shared", uuid.uuid4().hex)
    waited = False
    while True:
        current = _live_holder(home.path(".lock"))
        if current is None:
            write_bytes(_lease(holder), mine)
            current = _live_holder(home.path(".lock"))
            if current is None:
                break
            mine.unlink(missing_ok=True)
        if not wait:
            raise LockBusy(f"{home.root} is being written by {current}")
        if not waited:
            _say_waiting(home, holder, current)
            waited = True
        time.sleep(1.0)
    with _renewed(mine, holder):
        yield


@contextmanager
def _object_exclusive(path: UPath, holder: str, who: str, busy: str) -> Iterator[None]:
    """Create the lease object `path` only if absent and renew it while the block runs; while
    another holder's lease is live wait, saying "`who`: `busy` <holder>", and take over one
    that ran out."""
    waited = False
    while True:
        try:
            with path.open("xb") as f:
                f.write(_lease(holder))
            break
        except FileExistsError:
            try:
                raw = _read_lease(path)
                current = json.loads(raw)
            except (FileNotFoundError, ValueError):  # released, or being written, just now
                continue
            if current["expires"] < time.time():
                if _take_over(path, raw):
                    print(f"{who}: taking over the lock of {current['holder']}, not renewed since "
                          f"{LOCK_LEASE_SECONDS:.0f} s (its process is gone)", file=sys.stderr, flush=True)
                else:  # another waiter is taking it over: its lease follows
                    time.sleep(0.2)
                continue
            if not waited:
                print(f"{who}: {busy} {current['holder']}; waiting for it to finish", file=sys.stderr, flush=True)
                waited = True
            time.sleep(1.0)
    with _renewed(path, holder):
        yield


def _read_lease(path: UPath) -> bytes:
    return path.read_bytes()


def _take_over(path: UPath, expired: bytes) -> bool:
    """Delete the lease object `path` that still holds `expired`, when this caller is the one
    that claims it; False when another did.

    Object stores have no delete-if-unchanged, so a plain delete would race: two waiters read
    the same expired lease, the first replaces it with its own, and the second deletes that
    fresh lease and creates another; both then hold the lock. Each expired lease has a marker,
    `<path>.takeover/<sha256 of its bytes>`, created only if absent: the one waiter that
    creates it deletes the lease, the others wait for the new holder. Markers stay for
    `TAKEOVER_MARKER_SECONDS`, so a waiter that read the old lease long ago still finds its
    marker taken."""
    markers = path.parent / f"{path.name}.takeover"
    try:
        with (markers / hashlib.sha256(expired).hexdigest()).open("xb") as f:
            f.write(json.dumps({"at": time.time()}).encode())
    except FileExistsError:
        return False
    path.unlink(missing_ok=True)
    try:
        old = list(markers.iterdir())
    except FileNotFoundError:  # a listing cache that has not seen the marker yet
        old = []
    for marker in old:
        try:
            if json.loads(marker.read_bytes())["at"] < time.time() - TAKEOVER_MARKER_SECONDS:
                marker.unlink(missing_ok=True)
        except (FileNotFoundError, ValueError, KeyError):  # removed by another taker, or foreign
            continue
    return True


@contextmanager
def _object_lock(home: Home, holder: str, command: str) -> Iterator[None]:
    with _object_exclusive(home.path(".lock"), holder, f"lensless {command}", f"{home.root} is being written by"):
        waited = False
        while shared := _shared_leases(home):  # steps that started before this lock: let them end
            if not waited:
                _say_waiting(home, f"lensless {command}", f"{len(shared)} Dagster step(s), e.g. {shared[0]}")
                waited = True
            time.sleep(1.0)
        yield
