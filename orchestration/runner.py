"""Run asset selections through Dagster on the persistent instance, from the command line.

Runs launched here are ordinary Dagster runs in `$LENSLESS_HOME/dagster`: they show in
the UI (`lensless dev`) under the name of the job they ran (`job`, one of
`orchestration/jobs.py`, restricted to the selection), with their logs, lineage and
metadata. Execution is in-process so the command
line can show progress and return results directly. A selection is an `AssetSelection`
(a group, or keys and what the graph derives from them) or a list of asset keys; a run config
for the whole graph is cut down to the selected assets.
"""

import os

import dagster as dg

from orchestration.instance import get_instance, release_dead_runs, run_tags

LOG_LEVEL = os.environ.get("LENSLESS_LOG_LEVEL", "INFO")  # Dagster's console log level for CLI runs


class StepFailed(RuntimeError):
    """A run ended with a failed step; the message names the step and its error."""


def _selected_keys(defs: dg.Definitions, selection: dg.AssetSelection) -> set[str]:
    return {k.to_user_string() for k in selection.resolve(defs.resolve_asset_graph())}


def materialize_assets(selection: dg.AssetSelection | list[str], job: str, partition_key: str | None = None,
                       run_config: dict | None = None, tags: dict | None = None,
                       raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    """Materialise `selection` and their checks on the persistent instance, as a run of the
    named `job` (which must hold the whole selection). `run_config` may hold ops of other
    assets too: only the selected ones' are passed."""
    from orchestration.definitions import defs

    if not isinstance(selection, dg.AssetSelection):
        known = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
        unknown = sorted(set(selection) - known)
        if unknown:
            raise ValueError(f"unknown assets {unknown}; valid: {', '.join(sorted(known))}")
        selection = dg.AssetSelection.assets(*selection)
    keys = _selected_keys(defs, selection)
    ops = {k: v for k, v in (run_config or {}).get("ops", {}).items() if k in keys}
    config = {"loggers": {"console": {"config": {"log_level": LOG_LEVEL}}}, **({"ops": ops} if ops else {})}
    instance = get_instance()
    release_dead_runs(instance)  # a killed earlier command must not hold the train pool forever
    job_def = defs.resolve_job_def(job)
    outside = keys - {k.to_user_string() for k in job_def.asset_layer.selected_asset_keys}
    assert not outside, f"{job} does not hold {sorted(outside)}"
    return job_def.execute_in_process(
        asset_selection=[dg.AssetKey.from_user_string(k) for k in sorted(keys)],
        partition_key=partition_key,
        run_config=config,
        instance=instance,
        tags={"lensless/launched_by": "cli", **run_tags(), **(tags or {})},
        raise_on_error=raise_on_error,
    )


def failed_checks(result: dg.ExecuteInProcessResult) -> set[str]:
    """Names of the checks that evaluated as failed in a run."""
    return {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}


def raise_failures(result: dg.ExecuteInProcessResult, allowed_checks: set[str] = frozenset()) -> None:
    """Raise `StepFailed` for a run that failed, unless its only failures are the blocking
    checks named in `allowed_checks` (an outcome the caller reports, not an error)."""
    if result.success:
        return
    checks = failed_checks(result)
    check_steps = {f"{key.asset_key.to_python_identifier()}_{key.name}"
                   for key in result.job_def.asset_layer.asset_graph.asset_check_keys if key.name in checks}
    errors = []
    for event in result.get_step_failure_events():
        if event.step_key in check_steps and checks <= set(allowed_checks):
            continue
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:  # Dagster wraps the user's error
            error = error.cause
        # the message starts with the error's class, as Python prints it
        errors.append(f"{event.step_key}: {error.message.strip().splitlines()[0]}" if error else event.step_key)
    if errors:
        raise StepFailed("; ".join(errors))
    if not (checks and checks <= set(allowed_checks)):
        raise StepFailed(f"run {result.run_id} failed without a failed step; see it in `lensless dev`")
