"""The single-writer lock on an object store (fsspec's in-memory filesystem stands in for a
bucket): a second writer waits, a dead writer's lease is taken over; steps share the home's
lock, a command excludes them; a named lock is taken in turn."""

import pytest


def test_the_object_store_lock_excludes_a_second_writer_and_takes_over_a_dead_ones(monkeypatch, capsys):
    import json
    import threading
    import time
    import uuid

    from assets.store import lock
    from assets.store.files import Home
    from assets.store.lock import writer_lock

    home = Home.at(f"memory://lock-{uuid.uuid4().hex}/home")
    order = []

    def second_writer():
        with writer_lock(home, "run"):
            order.append("second")

    with writer_lock(home, "ingest"):
        second = threading.Thread(target=second_writer)
        second.start()
        time.sleep(1.5)
        order.append("first done")
    second.join(timeout=10)
    assert order == ["first done", "second"]  # the second waited for the release
    assert "is being written by `lensless ingest`" in capsys.readouterr().err

    # a lock whose lease ran out (its writer died without releasing) is taken over at once
    stale = Home.at(f"memory://lock-{uuid.uuid4().hex}/home")
    stale.path(".lock").write_bytes(json.dumps({"holder": "`lensless run` (pid 1)", "expires": time.time() - 1}).encode())
    monkeypatch.setattr(lock, "LOCK_LEASE_SECONDS", 0.4)  # renewed every 0.1 s while held
    with writer_lock(stale, "ingest"):
        time.sleep(0.5)
        assert json.loads(stale.path(".lock").read_bytes())["expires"] > time.time()  # renewed
    assert not stale.path(".lock").exists()
    assert "taking over the lock of `lensless run` (pid 1)" in capsys.readouterr().err


def _shared_and_exclusive(home, capsys):
    """On `home`: two step locks at once do not wait for each other; a command waits for the
    steps that hold it, and a step for a command (or, told not to wait, says who writes);
    the command's own thread passes its step locks."""
    import threading
    import time

    import pytest

    from assets.store.lock import LockBusy, step_lock, writer_lock

    order = []
    with step_lock(home, "run a"), step_lock(home, "run b"):  # would deadlock were they exclusive

        def ingest():
            with writer_lock(home, "ingest"):
                order.append("ingest")
                with step_lock(home, "its own in-process run"):  # passes: this thread holds it
                    order.append("its step")
                time.sleep(1.0)
                order.append("ingest done")  # its last act while holding the lock

        command = threading.Thread(target=ingest)
        command.start()
        time.sleep(1.5)
        order.append("steps done")
    deadline = time.time() + 10
    while "ingest" not in order and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(LockBusy, match="`lensless ingest`"), step_lock(home, "sensor", wait=False):
        pass
    with step_lock(home, "run c"):  # waits for the command
        order.append("run c")
    command.join(timeout=10)
    assert order == ["steps done", "ingest", "its step", "ingest done", "run c"]
    err = capsys.readouterr().err
    assert "lensless ingest: " in err and "run c: " in err and "being written by `lensless ingest`" in err


def test_steps_share_the_lock_and_a_command_excludes_them_on_a_local_home(tmp_path, capsys):
    from assets.store.files import Home

    _shared_and_exclusive(Home.at(tmp_path / "home"), capsys)


def test_steps_share_the_lock_and_a_command_excludes_them_on_an_object_store(capsys):
    import uuid

    from assets.store.files import Home

    home = Home.at(f"memory://lock-{uuid.uuid4().hex}/home")
    _shared_and_exclusive(home, capsys)
    shared = home.path(".lock-shared")
    assert not (shared.exists() and list(shared.iterdir())) and not home.path(".lock").exists()  # all released


def test_a_dagster_step_waits_for_a_command_and_a_commands_own_run_passes(tmp_path):
    """A run's step that uses `lensless_home` holds the lock shared: it starts only after a
    command in another process releases the home; a run the command itself executes in
    process (what every `lensless` command does) passes its own lock."""
    import subprocess
    import sys
    import time

    import dagster as dg

    from assets.store.files import Home
    from assets.store.lock import writer_lock
    from assets.store.resource import LenslessHome

    home = Home.at(tmp_path / "home")
    started = []

    @dg.asset
    def touches_home(lensless_home: LenslessHome) -> None:
        started.append(time.time())

    resources = {"lensless_home": LenslessHome(path=str(home.root))}
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.');"
        "from assets.store.files import Home; from assets.store.lock import writer_lock;"
        f"cm = writer_lock(Home.at({str(home.root)!r}), 'demo'); cm.__enter__(); print('held', flush=True);"
        "time.sleep(3); print(time.time(), flush=True)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert dg.materialize([touches_home], resources=resources).success
    released = float(holder.stdout.readline())
    holder.wait(timeout=10)
    assert started[0] >= released  # the step waited for the command

    with writer_lock(home, "run"):  # the command's own in-process run: no deadlock
        assert dg.materialize([touches_home], resources=resources).success
    assert len(started) == 2


@pytest.mark.parametrize("where", ["local", "object store"])
def test_a_named_lock_is_taken_in_turn_and_says_who_holds_it(where, tmp_path, capsys):
    import threading
    import time
    import uuid

    from assets.store.files import Home
    from assets.store.lock import named_lock, step_lock

    home = Home.at(tmp_path / "home") if where == "local" else Home.at(f"memory://lock-{uuid.uuid4().hex}/home")
    order = []

    def second():
        with step_lock(home, "run b"), named_lock(home, "ingest", "run b"):
            order.append("b")

    with step_lock(home, "run a"), named_lock(home, "ingest", "run a"):  # steps share the home's lock
        other = threading.Thread(target=second)
        other.start()
        time.sleep(1.5)
        order.append("a done")
    other.join(timeout=10)
    assert order == ["a done", "b"]
    assert f"run b: {home.root} is being written by run a; waiting" in capsys.readouterr().err


@pytest.fixture(params=["memory", "s3"])
def bucket(request, monkeypatch):
    """A bucket URL: fsspec's in-memory filesystem, or a moto S3 server on 127.0.0.1."""
    import os

    if request.param == "memory":
        yield "memory://lock"
        return
    from tests.servers import ServerMissing, s3_server

    try:
        with s3_server() as env:
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()  # one made before would keep its endpoint
            yield "s3://lensless"
            s3fs.S3FileSystem.clear_instance_cache()
    except ServerMissing as e:
        if os.environ.get("LENSLESS_REQUIRE_SERVERS") == "1":
            pytest.fail(f"integration servers required here: {e}")
        pytest.skip(str(e))


def test_two_writers_that_find_the_same_dead_lease_do_not_both_take_it(bucket, monkeypatch, capsys):
    """Both read the dead writer's lease before either acts; the slower one acts after the
    faster has replaced it. A plain delete there would remove the new holder's lease and let
    both in; only one may take it over, the other waits for it."""
    import json
    import threading
    import time
    import uuid

    from assets.store import lock
    from assets.store.files import Home
    from assets.store.lock import writer_lock

    home = Home.at(f"{bucket}/lock-{uuid.uuid4().hex}/home")
    home.path(".lock").write_bytes(json.dumps({"holder": "`lensless run` (pid 1)", "expires": time.time() - 1}).encode())
    monkeypatch.setattr(lock, "LOCK_LEASE_SECONDS", 2.0)
    both_read, first_read = threading.Barrier(2), {}
    real_read = lock._read_lease

    def read_then_meet(path):
        raw = real_read(path)
        name = threading.current_thread().name
        if path.name == ".lock" and name not in first_read:  # each writer's first look
            first_read[name] = raw
            both_read.wait(timeout=10)
            if name == "slow":
                time.sleep(0.5)  # the fast one takes over meanwhile
        return raw

    monkeypatch.setattr(lock, "_read_lease", read_then_meet)
    inside, overlaps, entered = [0], [], []
    guard = threading.Lock()

    def writer():
        with writer_lock(home, threading.current_thread().name):
            with guard:
                inside[0] += 1
                overlaps.append(inside[0])
                entered.append(threading.current_thread().name)
            time.sleep(1.0)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=writer, name=n) for n in ("fast", "slow")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert first_read["fast"] == first_read["slow"]  # both saw the same dead lease
    assert sorted(entered) == ["fast", "slow"] and max(overlaps) == 1  # both got in, one at a time
    assert entered[0] == "fast"  # the slow one waited for the fast one's lease
    assert capsys.readouterr().err.count("taking over the lock of `lensless run` (pid 1)") == 1
    assert not home.path(".lock").exists()
