"""The code location loads, and every asset has a group, a description and kinds."""

import dagster as dg
import pytest


def test_definitions_validate_loadable(lensless_home):
    from orchestration.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name != "default", f"{key} has no group"
        assert node.description, f"{key} has no description"
        assert node.kinds, f"{key} has no kinds"
        assert node.code_version, f"{key} has no code_version"


def test_instance_yaml_has_queue_and_train_pool(lensless_home):
    from orchestration.instance import get_instance

    instance = get_instance()
    text = (lensless_home.local_dir("dagster") / "dagster.yaml").read_text()
    assert "max_concurrent_runs" in text and str(lensless_home.root) not in text  # no path: the home can move
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    assert (lensless_home.local_dir("dagster") / "history" / "runs.db").exists()
    info = instance.event_log_storage.get_concurrency_info("train")
    assert info.limit == 1 and info.using_default_limit  # from dagster.yaml, not set by the CLI


def test_dagster_home_is_respected_when_set(lensless_home, tmp_path, monkeypatch):
    from orchestration.instance import ensure_dagster_home

    elsewhere = tmp_path / "instance"
    monkeypatch.setenv("DAGSTER_HOME", str(elsewhere))
    assert ensure_dagster_home() == elsewhere and (elsewhere / "dagster.yaml").exists()
    assert not (lensless_home.root / "dagster" / "dagster.yaml").exists()


def test_a_remote_home_keeps_its_instance_in_the_local_cache(tmp_path, monkeypatch):
    from orchestration.instance import ensure_dagster_home

    monkeypatch.setenv("LENSLESS_HOME", "s3://bucket/lensless")
    monkeypatch.setenv("LENSLESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    folder = ensure_dagster_home()
    assert folder == tmp_path / "cache" / "s3_bucket_lensless" / "dagster"
    assert not (tmp_path / ".lensless-dagster").exists() and not (tmp_path / "s3:").exists()


def test_cli_help_version_and_did_you_mean(capsys):
    from orchestration.cli import main

    assert main([]) == 0 and "usage: lensless" in capsys.readouterr().out
    assert main(["recomend", "x"]) == 2
    assert "did you mean `lensless recommend`?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("lensless ")


def test_every_cli_option_has_help():
    import argparse

    from orchestration.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, sub in subparsers.choices.items() for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, f"options without help text: {missing}"
    assert all(choice.help for choice in subparsers._choices_actions), "a command without help text"


def test_dev_serves_the_ui_behind_a_host_check_without_the_venv_on_path(tmp_path):
    """`.venv/bin/lensless dev` with the venv not on PATH starts the daemon and the UI; the UI
    answers its own names and refuses any other Host (DNS rebinding), and Ctrl-C stops both."""
    import http.client
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.orchestration.test_ui_browser import free_port, wait_healthy

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    env = {**os.environ, "LENSLESS_HOME": str(tmp_path / "home"), "PATH": "/nonexistent",
           "LENSLESS_ALLOWED_HOSTS": "ui.internal"}
    env.pop("DAGSTER_HOME", None)
    log = open(tmp_path / "dev.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).parent / "lensless"), "dev", "--port", str(port)], cwd=root,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(port, proc)

        def status(host: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/server_info", headers={"Host": host})
            return conn.getresponse().status

        assert status(f"127.0.0.1:{port}") == 200 and status(f"localhost:{port}") == 200
        assert status("ui.internal") == 200
        assert status("attacker.example") == 400 and status(f"attacker.example:{port}") == 400
        children = subprocess.run(["pgrep", "-f", "-s", str(proc.pid), "dagster._daemon run"],
                                  capture_output=True, text=True).stdout.split()
        assert children, (tmp_path / "dev.log").read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        proc.wait(timeout=60)
        time.sleep(1)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in children)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_one_instance_serves_one_home(lensless_home, tmp_path, monkeypatch):
    from orchestration.instance import get_instance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "shared-instance"))
    get_instance()  # an instance outside the home records the home it serves
    monkeypatch.setenv("LENSLESS_HOME", str(tmp_path / "another"))  # the same instance for another home
    with pytest.raises(ValueError, match="serves LENSLESS_HOME=.*give each home its own instance"):
        get_instance()


def test_a_moved_home_keeps_its_own_instance(tmp_path, monkeypatch):
    import shutil

    from orchestration.instance import get_instance

    old, new = tmp_path / "old", tmp_path / "new"
    monkeypatch.setenv("LENSLESS_HOME", str(old))
    get_instance().add_dynamic_partitions("image_batches", ["b1"])
    shutil.move(old, new)
    monkeypatch.setenv("LENSLESS_HOME", str(new))
    monkeypatch.delenv("DAGSTER_HOME")  # exported by the first call, as a fresh command would not have it
    moved = get_instance()
    assert moved.get_dynamic_partitions("image_batches") == ["b1"]
    moved.add_dynamic_partitions("image_batches", ["b2"])
    assert not old.exists()  # nothing written to where the home was


def test_processes_opening_a_new_instance_at_once_all_succeed(tmp_path):
    """Four commands started together on a fresh home: the first open of the SQLite instance
    is serialised (unserialised, 6 of 12 such processes failed in alembic)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "LENSLESS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(root)}
    env.pop("DAGSTER_HOME", None)
    code = "import orchestration.instance as i; print(i.get_instance().get_runs_count())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outcomes = [(p.wait(timeout=120), p.stdout.read().strip(), p.stderr.read()[-500:]) for p in procs]
    assert all(rc == 0 and out == "0" for rc, out, _ in outcomes), outcomes
