"""The embedded Dagster instance: `DAGSTER_HOME = $LENSLESS_HOME/dagster` with our dagster.yaml.

`ensure_dagster_home()` writes `dagster.yaml` (SQLite storage so run history and lineage
survive restarts, a run queue with a max-concurrent-runs limit, the `train` pool limited to
one step at a time, telemetry off) and points `DAGSTER_HOME` at it. The `lensless` command
line calls it before anything touches Dagster; `lensless dev` calls it before starting
`dagster dev`. An existing `dagster.yaml` is left alone, so a Postgres one (deploy/) wins.
"""

from __future__ import annotations

import os
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
telemetry:
  enabled: false
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
