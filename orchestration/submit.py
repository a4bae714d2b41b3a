"""Submit a job to the instance's run coordinator and follow it: `lensless submit JOB`.

Unlike the in-process runs of `orchestration.runner`, a submitted run goes through the
instance: the run queue (and its limits), the run launcher (a process beside the code
location, or a pod on Kubernetes) and the code location's executor (multiprocess, or a pod
per step with LENSLESS_EXECUTOR=k8s). A queued run starts only when a daemon serves the
instance (`lensless dev`, or `dagster-daemon run -m orchestration.definitions`).
`follow` prints each step as it starts and ends, until the run finishes.
"""

from __future__ import annotations

import json
import sys
import time

import dagster as dg

from orchestration.instance import get_instance

CODE_LOCATION = ("orchestration.definitions",)
STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
               dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}


def submit_job(job_name: str, partition: str | None = None, run_config: dict | None = None) -> str:
    """Submit `job_name` of the lensless code location to the instance; returns the run id."""
    from dagster._cli.job import execute_launch_command
    from dagster_shared.cli import WorkspaceOpts

    from orchestration.definitions import defs

    jobs = sorted(j.name for j in defs.jobs or [])
    if job_name not in jobs:
        raise ValueError(f"unknown job {job_name!r}; valid: {', '.join(jobs)}")
    instance = get_instance()
    check_partition(job_name, defs.resolve_job_def(job_name).partitions_def, partition, instance)
    tags = {"lensless/launched_by": "cli-submit", **({"dagster/partition": partition} if partition else {})}
    run = execute_launch_command(instance=instance, workspace_opts=WorkspaceOpts(module_name=CODE_LOCATION),
                                 job_name=job_name, config_json=json.dumps(run_config or {}), tags=json.dumps(tags))
    return run.run_id


def check_partition(job_name: str, partitions, partition: str | None, instance) -> None:
    """ValueError, naming what is valid, unless `partition` fits the job: none for a job that
    is not partitioned, a known key of its dynamic partitions (the image batches) for one that is."""
    if partitions is None:
        if partition:
            raise ValueError(f"job {job_name} is not partitioned; drop --partition")
        return
    if not isinstance(partitions, dg.DynamicPartitionsDefinition):  # lensless's jobs have no other kind
        return
    known = instance.get_dynamic_partitions(partitions.name)
    if partition not in known:
        shown = ", ".join(known[-5:]) + (f" (and {len(known) - 5} more)" if len(known) > 5 else "")
        what = f"unknown {partitions.name} partition {partition!r}" if partition else f"job {job_name} needs --partition"
        raise ValueError(f"{what}; known: {shown or '(none yet: lensless ingest SOURCE cuts one)'}")


def follow(run_id: str, poll_seconds: float = 2.0, queued_hint_after: float = 30.0) -> dg.DagsterRunStatus:
    """Print the run's step events as they happen; return its final status."""
    instance = get_instance()
    cursor, started, hinted = None, time.monotonic(), False
    while True:
        run = instance.get_run_by_id(run_id)
        records = instance.get_records_for_run(run_id, cursor=cursor, of_type=STEP_EVENTS)
        cursor = records.cursor
        for record in records.records:
            event = record.event_log_entry
            print(f"  {event.dagster_event.event_type_value.lower():<13} {event.step_key or ''}"
                  f"{': ' + event.message.splitlines()[0] if event.dagster_event.is_failure else ''}",
                  file=sys.stderr, flush=True)
        if run.is_finished:
            return run.status
        if run.status == dg.DagsterRunStatus.QUEUED and not hinted and time.monotonic() - started > queued_hint_after:
            print(f"  run {run_id} is still queued: is a daemon serving this instance? "
                  "(`lensless dev`, or `dagster-daemon run -m orchestration.definitions`)", file=sys.stderr)
            hinted = True
        time.sleep(poll_seconds)
