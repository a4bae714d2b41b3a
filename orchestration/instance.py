"""The Dagster instance: `$DAGSTER_HOME` when set, else `$LENSLESS_HOME/dagster`.

`ensure_dagster_home()` picks the instance folder, writes `dagster.yaml` there unless one
exists, and exports `DAGSTER_HOME`. Which folder:
- `$DAGSTER_HOME`, when it is set (put `deploy/dagster-postgres.yaml` there as `dagster.yaml`
  for a Postgres instance);
- else `$LENSLESS_HOME/dagster` for a local home;
- else, for a home on object storage, `Home.cache("dagster")` on this machine (Dagster keeps
  its instance on a local disk or in Postgres, never in a bucket).
The written `dagster.yaml` holds SQLite storage (run history and lineage survive restarts), a
run queue with a max-concurrent-runs limit, pools limited to one step at a time (the one pool
is `train`), telemetry off. An existing file is never rewritten. The `lensless` command line
calls this before anything touches Dagster; `lensless dev` before starting the daemon and UI.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from pathlib import Path

from assets.compute import TRAIN_POOL
from assets.store.files import Home, check_folder, write_bytes

MAX_RUNS_ENV = "LENSLESS_MAX_CONCURRENT_RUNS"  # runs at once, written into a new dagster.yaml (default 2)
POOLS = (TRAIN_POOL,)  # every pool of the code location; dagster.yaml limits each to one step

DAGSTER_YAML = """\
# Written by lensless (orchestration/instance.py). Edit freely: it is not rewritten.
# Storage is Dagster's default: SQLite under $DAGSTER_HOME (history/ for runs and events,
# schedules/, storage/ for compute logs). No path is written here, so a moved or copied home
# keeps its own runs.
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
  pools:
    # The limit of every pool without its own (`dagster instance concurrency set`). The one
    # pool is `train`: training saturates the machine, so never two training steps at once.
    default_limit: 1
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
    """The instance folder (see the module doc): `$DAGSTER_HOME`, else one beside the home."""
    if os.environ.get("DAGSTER_HOME"):
        return check_folder(os.environ["DAGSTER_HOME"], "DAGSTER_HOME")
    return check_folder(Home.from_env().cache("dagster"), "the Dagster instance folder")


def ensure_dagster_home() -> Path:
    """Create the instance directory and dagster.yaml if needed, and export DAGSTER_HOME."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    yaml_path = home / "dagster.yaml"
    if not yaml_path.exists():  # whole or not at all: Dagster reads a partial one as its defaults
        with contextlib.suppress(FileExistsError):  # another process wrote it just now
            write_bytes(DAGSTER_YAML.format(max_runs=max_concurrent_runs()).encode(), yaml_path, exclusive=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def max_concurrent_runs() -> int:
    """`$LENSLESS_MAX_CONCURRENT_RUNS`, a positive integer (default 2)."""
    value = os.environ.get(MAX_RUNS_ENV, "2")
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_RUNS_ENV}={value!r}: expected a positive integer (runs at once, default 2)")
    return int(value)


HOME_KEY = "lensless/home"  # which LENSLESS_HOME an instance serves, in its key-value store


def get_instance():
    """The persistent instance. An instance outside the home (`DAGSTER_HOME` set, Postgres)
    records the `LENSLESS_HOME` it serves; ValueError when it already serves another (its
    dynamic partitions name that home's batches: one instance, one home)."""
    from dagster import DagsterInstance

    folder = ensure_dagster_home()
    with _creation_lock(folder):
        # the first open creates the SQLite databases and stamps their migrations; two
        # processes doing that at once broke them (alembic "more than one head", "table
        # already exists"), so opening is serialised per instance folder
        instance = DagsterInstance.get()
        instance.get_runs_count()
    home = Home.from_env()
    if home.local and folder == home.local_dir("dagster"):
        return instance  # the home's own instance moves with it: one home by construction
    home = str(home.root)
    served = instance.run_storage.get_cursor_values({HOME_KEY}).get(HOME_KEY)
    if served is None:
        instance.run_storage.set_cursor_values({HOME_KEY: home})
    elif served != home:
        raise ValueError(f"the Dagster instance in {dagster_home()} serves LENSLESS_HOME={served}, not {home}: "
                         "give each home its own instance (another DAGSTER_HOME, or another Postgres database)")
    return instance


@contextlib.contextmanager
def _creation_lock(folder: Path):
    """An exclusive `flock` on `<instance folder>/.open.lock` (released if the process dies)."""
    with open(folder / ".open.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


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
    for pool in POOLS:
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
