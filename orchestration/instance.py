"""The embedded Dagster instance: `DAGSTER_HOME = $LENSLESS_HOME/dagster` with our dagster.yaml.

`ensure_dagster_home()` writes `dagster.yaml` (SQLite storage so run history and lineage
survive restarts, a run queue with a max-concurrent-runs limit, the `train` pool limited to
one step at a time, telemetry off) and points `DAGSTER_HOME` at it. The `lensless` command
line calls it before anything touches Dagster; `lensless dev` calls it before starting
`dagster dev`. An existing `dagster.yaml` is left alone, so a Postgres one (deploy/) wins.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from assets.store.files import Home

MAX_CONCURRENT_RUNS = int(os.environ.get("LENSLESS_MAX_CONCURRENT_RUNS", "2"))
POOL_LIMITS = {"train": 1}  # training saturates the machine; never two at once

DAGSTER_YAML = """\
# Written by lensless (orchestration/instance.py). Edit freely: it is not rewritten.
storage:
  sqlite:
    base_dir: {home}/storage
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {home}
compute_logs:
  module: dagster._core.storage.local_compute_log_manager
  class: LocalComputeLogManager
  config:
    base_dir: {home}/logs
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
  pools:
    # Pools without an explicit limit (the `train` limit is set in the instance by lensless).
    default_limit: 4
run_monitoring:
  # the daemon (`lensless dev`, `dagster-daemon`) marks runs whose process died as failed,
  # which frees their pool slots; command-line runs are checked by the command line itself
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 60
telemetry:
  enabled: false
nux:
  enabled: false  # no "join the community" modal over the UI
"""


def dagster_home() -> Path:
    """`$LENSLESS_HOME/dagster` (always local: Dagster's instance lives on this machine)."""
    home = Home.from_env()
    if not home.local:
        return Path(os.path.abspath(".lensless-dagster"))
    return home.local_dir("dagster")


def ensure_dagster_home() -> Path:
    """Create the instance directory and dagster.yaml if needed, and export DAGSTER_HOME."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    yaml_path = home / "dagster.yaml"
    if not yaml_path.exists():
        yaml_path.write_text(DAGSTER_YAML.format(home=home.as_posix(), max_runs=MAX_CONCURRENT_RUNS))
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance():
    """The persistent instance, with pool limits applied (idempotent)."""
    from dagster import DagsterInstance

    ensure_dagster_home()
    instance = DagsterInstance.get()
    for pool, limit in POOL_LIMITS.items():
        if instance.event_log_storage.get_concurrency_info(pool).slot_count != limit:
            instance.event_log_storage.set_concurrency_slots(pool, limit)
    return instance


PID_TAG, HOST_TAG = "lensless/pid", "lensless/host"  # which process runs a command-line run


def run_tags() -> dict[str, str]:
    """Tags naming this process, so a later command can tell when its runs died with it."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_runs(instance) -> list[str]:
    """Mark failed the unfinished command-line runs of this host whose process is gone, and
    free the pool slots of every finished run that still holds one. Returns the run ids."""
    import dagster as dg

    unfinished = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    released = []
    for run in instance.get_runs(dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: socket.gethostname()})):
        pid = int(run.tags.get(PID_TAG, "0"))
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(run, f"the lensless process {pid} that ran it is gone (killed or crashed)")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            released.append(run.run_id)
    for pool in POOL_LIMITS:
        info = instance.event_log_storage.get_concurrency_info(pool)
        for run_id in {c.run_id for c in info.claimed_slots} | {p.run_id for p in info.pending_steps}:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                instance.event_log_storage.free_concurrency_slots_for_run(run_id)
                released.append(run_id)
    for run_id in released:
        print(f"lensless: run {run_id} died without finishing; marked failed and freed its pool slots",
              file=sys.stderr)
    return released
