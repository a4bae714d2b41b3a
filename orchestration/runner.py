"""Run asset selections through Dagster on the persistent instance, from the command line.

Runs launched here are ordinary Dagster runs in `$LENSLESS_HOME/dagster`: they show in
`dagster dev` with their logs, lineage and metadata. Execution is in-process so the command
line can show progress and return results directly.
"""

import os

import dagster as dg

from orchestration.instance import get_instance

LOG_LEVEL = os.environ.get("LENSLESS_LOG_LEVEL", "INFO")  # Dagster's console log level for CLI runs


def materialize_assets(selection: list[str], partition_key: str | None = None, run_config: dict | None = None,
                       tags: dict | None = None) -> dg.ExecuteInProcessResult:
    """Materialise `selection` (asset key strings) and their checks, on the persistent instance."""
    from orchestration.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    unknown = sorted(set(selection) - keys)
    if unknown:
        raise ValueError(f"unknown assets {unknown}; valid: {', '.join(sorted(keys))}")
    run_config = {"loggers": {"console": {"config": {"log_level": LOG_LEVEL}}}, **(run_config or {})}
    return dg.materialize(
        assets=[*(defs.assets or []), *(defs.asset_checks or [])],
        selection=selection,
        partition_key=partition_key,
        run_config=run_config,
        instance=get_instance(),
        tags={"lensless/launched_by": "cli", **(tags or {})},
        resources=defs.resources,
    )
