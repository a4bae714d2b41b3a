"""The single-writer lock on an object store (fsspec's in-memory filesystem stands in for a
bucket): a second writer waits, a dead writer's lease is taken over."""

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
