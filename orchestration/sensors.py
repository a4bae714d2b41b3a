"""Sensors. `new_images_sensor` turns new files in watched sources into batches and runs."""


import json
import os
import time

import dagster as dg

from assets.ingestion.assets import image_batches, raw_images
from assets.ingestion.sources import (
    batches_to_ingest_again,
    cut_batches,
    known_batches,
    list_source,
    new_entries,
    register_batch,
    watched_label_depths,
    watched_sources,
)
from assets.store.lock import LockBusy, step_lock
from assets.store.resource import LenslessHome


def sensor_batch_size() -> int:
    """Most files per batch the sensor cuts (`LENSLESS_SENSOR_BATCH_SIZE`, default 1000)."""
    return int(os.environ.get("LENSLESS_SENSOR_BATCH_SIZE", "1000"))


@dg.sensor(
    name="new_images_sensor",
    asset_selection=[raw_images],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Lists watched sources (no decoding), cuts new files into batches of at most "
    "LENSLESS_SENSOR_BATCH_SIZE, adds an image_batches partition per batch and requests its ingestion.",
)
def new_images_sensor(context: dg.SensorEvaluationContext,
                      lensless_home: LenslessHome) -> dg.SensorResult | dg.SkipReason:
    """New files → new `image_batches` partitions → `raw_images` runs, in one tick."""
    home = lensless_home.get()
    sources = watched_sources(home)
    if not sources:
        return dg.SkipReason("no watched sources: set LENSLESS_WATCH or run `lensless ingest SOURCE` once")
    started = time.perf_counter()
    try:  # a command writing the home may be cutting batches of the same files: not now
        with step_lock(home, "new_images_sensor", wait=False):
            existing, keys, retries, listed = _cut_batches(context, home, sources)
    except LockBusy as e:
        return dg.SkipReason(f"{e}; the next tick lists again")
    cursor = json.dumps({"listed": listed, "batches": len(existing) + len(keys),
                         "last_batch": keys[-1] if keys else (json.loads(context.cursor)["last_batch"] if context.cursor else None),
                         "list_seconds": round(time.perf_counter() - started, 3)})
    if not keys and not retries:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"no new files among {listed} listed"), cursor=cursor)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=k, tags={"lensless/reason": "new_images"}) for k in keys]
        + [dg.RunRequest(partition_key=k, run_key=key, tags={"lensless/reason": "interrupted_batch"})
           for k, key in retries],
        dynamic_partitions_requests=[image_batches.build_add_request(keys)],
        cursor=cursor,
    )


def _cut_batches(context: dg.SensorEvaluationContext, home, sources: list[str]):
    """(partitions that exist, batches to add and run, batches to ingest again, files listed).
    A batch whose file list was frozen but whose partition was never added (a crash between
    the two) is added now, so no file is stranded. Ingested again: `batches_to_ingest_again`."""
    existing = set(context.instance.get_dynamic_partitions(image_batches.name))
    keys = [b for b in known_batches(home) if b not in existing]
    retries = _interrupted(context.instance, [b for b in batches_to_ingest_again(home) if b in existing])
    listed, depths = 0, watched_label_depths(home)
    for source in sources:
        try:
            listing = list_source(source, label_depth=depths.get(source, 1))
        except (ValueError, OSError) as e:  # gone, or unreachable: the other sources go on
            context.log.warning(f"watched source {source} skipped this tick: {e}")
            continue
        listed += listing.files.height + listing.skipped.height
        fresh = new_entries(home, listing)
        for chunk in cut_batches(fresh, sensor_batch_size()) if fresh.height else []:
            keys.append(register_batch(home, chunk))
    return existing, keys, retries, listed


def _interrupted(instance, batches: list[str]) -> list[tuple[str, str]]:
    """(batch, run key) for each of `batches` whose last run has ended (for a batch without a
    manifest: failed, or its process died and run monitoring marked it): it is requested
    again, once per ended run. A batch with no run yet waits for its first request."""
    out = []
    for batch in batches:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": batch}), limit=1)
        if runs and runs[0].is_finished:
            out.append((batch, f"{batch}:after:{runs[0].run_id}"))
    return out
