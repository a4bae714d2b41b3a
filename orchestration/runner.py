"""Run asset selections through Dagster on the persistent instance, from the command line.

Runs launched here are ordinary Dagster runs in `$LENSLESS_HOME/dagster`: they show in
the UI (`lensless dev`) under the name of the job they ran (`job`, one of
`orchestration/jobs.py`, restricted to the selection), with their logs, lineage and
metadata. Execution is in-process so the command
line can show progress and return results directly; each run records the origin of its job
in the code location `workspace.yaml` loads, so the UI can re-execute it. A selection is an `AssetSelection`
(a group, or keys and what the graph derives from them) or a list of asset keys; a run config
for the whole graph is cut down to the selected assets.
"""

import json
import os
import sys
import typing
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import dagster as dg

from orchestration.instance import get_instance, release_dead_runs, run_tags

LOG_LEVEL = os.environ.get("LENSLESS_LOG_LEVEL", "INFO")  # Dagster's console log level for CLI runs
WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"


class StepFailed(RuntimeError):
    """A run ended with a failed step; the message names the step and its error."""


def _selected_keys(defs: dg.Definitions, selection: dg.AssetSelection) -> set[str]:
    return {k.to_user_string() for k in selection.resolve(defs.resolve_asset_graph())}


def _config_class(assets_def: dg.AssetsDefinition) -> type[dg.Config] | None:
    """The Pythonic config class an asset's function takes as `config`, if any."""
    cls = typing.get_type_hints(assets_def.op.compute_fn.decorated_fn).get("config")
    return cls if isinstance(cls, type) and issubclass(cls, dg.Config) else None


def up_to_date(keys: list[str], partition_key: str | None = None, run_config: dict | None = None,
               instance: dg.DagsterInstance | None = None) -> dict[str, str]:
    """{asset: why} for those of `keys` that a run need not materialise again: Dagster sees them
    as fresh (materialised; same code version; no input with a newer data version since) and,
    where the asset records its `settings`, it ran with the ones `run_config` gives now (where it
    records none, with no override in `run_config`).
    An asset is never up to date while an input in `keys` will run first, nor when an input
    has so many partitions that Dagster does not track their versions."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.definitions.data_version import (
        SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD,
        CachingStaleStatusResolver,
        StaleStatus,
    )
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.definitions.temporal_context import TemporalContext

    from assets.settings import SETTINGS
    from orchestration.definitions import defs

    instance = instance or get_instance()
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=datetime.now(timezone.utc), last_event_id=None),
                          instance=instance, asset_graph=graph)
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    ops = (run_config or {}).get("ops", {})
    with partition_loading_context(dynamic_partitions_store=instance):  # inputs whose versions Dagster skips
        untracked = {k for k in graph.get_all_asset_keys() if graph.get(k).is_partitioned
                     and graph.get(k).partitions_def.get_num_partitions() >= SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD}
    fresh, running = {}, set()
    for key in (k for k in graph.toposorted_asset_keys if k.to_user_string() in keys):
        name, node = key.to_user_string(), graph.get(key)
        partition = partition_key if node.is_partitioned else None
        if (running & set(node.parent_keys) or untracked & set(node.parent_keys)
                or (node.is_partitioned and partition is None)  # Dagster calls that FRESH; it means nothing
                or resolver.get_status(key, partition) != StaleStatus.FRESH):
            running.add(key)
            continue
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1).records
        event = records[0].event_log_entry
        recorded = event.asset_materialization.metadata.get(SETTINGS)
        cls, overrides = _config_class(node.assets_def), ops.get(name, {}).get("config", {})
        if recorded is not None and cls is not None:
            same = json.loads(json.dumps(cls(**overrides).model_dump())) == recorded.value
        else:  # no settings recorded: the defaults are assumed, so any override makes it due
            same = not overrides
        if not same:
            running.add(key)
            continue
        fresh[name] = f"run {event.run_id[:8]}"
    return fresh


def job_origin(job: str):
    """Where `job` lives for the webserver: the code location `workspace.yaml` loads (its
    module, working directory and name; the Kubernetes user deployment has the same name)."""
    import yaml
    from dagster._core.definitions.repository_definition.valid_definitions import (
        SINGLETON_REPOSITORY_NAME,
    )
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    (entry,) = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    module = entry["python_module"]
    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=module["module_name"],
                                  working_directory=str(WORKSPACE.parent / module.get("working_directory", ".")))
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, module["location_name"])
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job)


@contextmanager
def _recording_origin(instance: dg.DagsterInstance, job: str):
    """`execute_in_process` creates its run without a code location, and the UI cannot
    re-execute such a run; within this block, runs `instance` creates carry `job_origin(job)`."""
    instance.create_run_for_job = partial(type(instance).create_run_for_job, instance,
                                          remote_job_origin=job_origin(job))
    try:
        yield
    finally:
        del instance.create_run_for_job


def materialize_assets(selection: dg.AssetSelection | list[str], job: str, partition_key: str | None = None,
                       run_config: dict | None = None, tags: dict | None = None,
                       raise_on_error: bool = True, skip_up_to_date: bool = False) -> dg.ExecuteInProcessResult | None:
    """Materialise `selection` and their checks on the persistent instance, as a run of the
    named `job` (which must hold the whole selection). `run_config` may hold ops of other
    assets too: only the selected ones' are passed. A failed step raises `StepFailed` unless
    `raise_on_error` is False. With `skip_up_to_date`, the assets
    `up_to_date` names are left out (and said so on stderr); None when that is all of them."""
    from orchestration.definitions import defs

    if not isinstance(selection, dg.AssetSelection):
        known = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
        unknown = sorted(set(selection) - known)
        if unknown:
            raise ValueError(f"unknown assets {unknown}; valid: {', '.join(sorted(known))}")
        selection = dg.AssetSelection.assets(*selection)
    keys = _selected_keys(defs, selection)
    if skip_up_to_date:
        fresh = up_to_date(sorted(keys), partition_key, run_config)
        if fresh:
            where = f" [{partition_key}]" if partition_key else ""
            print(f"up to date{where}, skipped: " + ", ".join(f"{k} ({why})" for k, why in fresh.items()),
                  file=sys.stderr, flush=True)
        keys -= set(fresh)
        if not keys:
            return None
    ops = {k: v for k, v in (run_config or {}).get("ops", {}).items() if k in keys}
    config = {"loggers": {"console": {"config": {"log_level": LOG_LEVEL}}}, **({"ops": ops} if ops else {})}
    instance = get_instance()
    release_dead_runs(instance)  # a killed earlier command must not hold the train pool forever
    job_def = defs.resolve_job_def(job)
    outside = keys - {k.to_user_string() for k in job_def.asset_layer.selected_asset_keys}
    assert not outside, f"{job} does not hold {sorted(outside)}"
    with _recording_origin(instance, job):
        result = job_def.execute_in_process(
            asset_selection=[dg.AssetKey.from_user_string(k) for k in sorted(keys)],
            partition_key=partition_key,
            run_config=config,
            instance=instance,
            tags={"lensless/launched_by": "cli", **run_tags(), **(tags or {})},
            raise_on_error=False,
        )
    if raise_on_error:  # StepFailed naming the step and its error (a retried step's too)
        raise_failures(result)
    return result


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
        # Dagster wraps the user's error (and a retried step's last one); the user's error may
        # wrap a library's, but its own message is the one that names the problem
        while error is not None and error.cause is not None and (
                error.cls_name.startswith("Dagster") or error.cls_name == "RetryRequestedFromPolicy"):
            error = error.cause
        # the message starts with the error's class, as Python prints it
        errors.append(f"{event.step_key}: {error.message.strip().splitlines()[0]}" if error else event.step_key)
    if errors:
        raise StepFailed("; ".join(errors))
    if not (checks and checks <= set(allowed_checks)):
        raise StepFailed(f"run {result.run_id} failed without a failed step; see it in `lensless dev`")
