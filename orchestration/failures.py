"""A run-failure sensor that says, in one line, which asset failed and why."""

import dagster as dg


@dg.run_failure_sensor(
    name="run_failure_logger",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Logs the failed assets and the error of every failed run.",
)
def run_failure_logger(context: dg.RunFailureSensorContext) -> None:
    """Name the failed step(s)/asset(s) and the first line of the error."""
    steps = []
    for event in context.get_step_failure_events():
        error = event.event_specific_data.error if event.event_specific_data else None
        first = (error.message.strip().splitlines() or ["?"])[0] if error else "unknown error"
        steps.append(f"{event.step_key}: {first}")
    run = context.dagster_run
    assets = sorted(k.to_user_string() for k in (run.asset_selection or []))
    message = (f"lensless run {run.run_id[:8]} failed"
               f"{' (assets: ' + ', '.join(assets) + ')' if assets else ''}: "
               f"{'; '.join(steps) or context.failure_event.message}")
    context.log.error(message)
