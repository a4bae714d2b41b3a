"""The home's single-writer lock, on a local disk or an object store. No Dagster.

Commands that write the lake (`lensless ingest`, `run`, `demo`, ...) hold `writer_lock`; a
second writer waits, saying who holds it. Readers never take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from upath import UPath

from assets.store.files import Home, write_bytes

LOCK_LEASE_SECONDS = 60.0  # a remote lock not renewed for this long is a dead writer's


@contextmanager
def writer_lock(home: Home, command: str) -> Iterator[None]:
    """Hold the home's single-writer lock while `command` writes; a second writer waits,
    saying who holds it. Readers never take it.

    Locally it is an exclusive `flock` on `<home>/.lock`: the kernel drops it when its
    process dies. On object storage it is the object `<home>/.lock`, created only if absent
    (an exclusive create: `If-None-Match: *` on S3) and renewed by a thread while held; a lock
    not renewed for `LOCK_LEASE_SECONDS` was left by a writer that died, and is taken over."""
    holder = f"`lensless {command}` (pid {os.getpid()} on {socket.gethostname()})"
    if not home.local:
        with _object_lock(home.path(".lock"), holder, command):
            yield
        return
    path = home.local_dir(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            current = f.read().strip() or "another lensless command"
            _say_waiting(home, command, current)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(holder)
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _say_waiting(home: Home, command: str, holder: str) -> None:
    print(f"lensless {command}: {home.root} is being written by {holder}; waiting for it to finish",
          file=sys.stderr, flush=True)


@contextmanager
def _object_lock(path: UPath, holder: str, command: str) -> Iterator[None]:
    def lease() -> bytes:
        return json.dumps({"holder": holder, "expires": time.time() + LOCK_LEASE_SECONDS}).encode()

    waited = False
    while True:
        try:
            with path.open("xb") as f:
                f.write(lease())
            break
        except FileExistsError:
            try:
                current = json.loads(path.read_bytes())
            except (FileNotFoundError, ValueError):  # released, or being written, just now
                continue
            if current["expires"] < time.time():
                print(f"lensless {command}: taking over the lock of {current['holder']}, not renewed since "
                      f"{LOCK_LEASE_SECONDS:.0f} s (its process is gone)", file=sys.stderr, flush=True)
                path.unlink(missing_ok=True)
                continue
            if not waited:
                _say_waiting(Home(path.parent), command, current["holder"])
                waited = True
            time.sleep(1.0)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LOCK_LEASE_SECONDS / 4):
            write_bytes(lease(), path)

    renewer = threading.Thread(target=renew, name="lensless-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        path.unlink(missing_ok=True)
