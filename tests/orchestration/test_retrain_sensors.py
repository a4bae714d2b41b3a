"""encoder_retrain_sensor, reranker_retrain_sensor and the schedules, with build_*_context."""

from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl

from assets.store.lake import EVENT_SCHEMA, MANIFEST_SCHEMA, write_table
from assets.store.resource import LenslessHome
from orchestration.retrain_sensors import encoder_retrain_sensor, reranker_retrain_sensor


def write_manifest(home, batch: str, n: int) -> None:
    rows = [{"image_id": f"{batch}-{i}", "row": i, "uri": f"/x/{batch}/{i}.png", "sha256": f"{batch}{i}", "width": 8,
             "height": 8, "label": None, "batch": batch, "ingested_at": datetime.now(timezone.utc)} for i in range(n)]
    write_table(home, "raw_images", pl.DataFrame(rows, schema=MANIFEST_SCHEMA), batch)


def write_embeddings(home, batch: str, center: np.ndarray, n: int = 20) -> None:
    rng = np.random.default_rng(0)
    emb = center + 0.05 * rng.normal(size=(n, len(center)))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    write_table(home, "image_embeddings", pl.DataFrame({
        "image_id": [f"{batch}-{i}" for i in range(n)], "encoder_version": "e1",
        "embedding": pl.Series(emb, dtype=pl.Array(pl.Float32, len(center)))}), batch)


def report(instance, key: str, **metadata) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, metadata=metadata))


def tick(home, sensor, instance):
    with dg.build_sensor_context(instance=instance,
                                 resources={"lensless_home": LenslessHome(path=str(home.root))}) as context:
        return sensor(context)


def test_encoder_sensor_growth_and_drift(home):
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(tick(home, encoder_retrain_sensor, instance), dg.SkipReason)  # nothing trained yet
    write_manifest(home, "b1", 100)
    e = np.eye(8)
    write_embeddings(home, "b1", e[0])
    report(instance, "image_encoder", catalog_images=100, trained_batches="b1")
    write_manifest(home, "b2", 10)
    write_embeddings(home, "b2", e[0])
    skip = tick(home, encoder_retrain_sensor, instance)
    assert isinstance(skip, dg.SkipReason) and "10.0%" in skip.skip_message

    write_manifest(home, "b3", 30)  # 140 images: +40% > 25%
    request = tick(home, encoder_retrain_sensor, instance)
    assert request.tags["lensless/reason"] == "new_images" and request.run_key == "encoder-growth-140"

    report(instance, "image_encoder", catalog_images=140, trained_batches="b1")
    write_embeddings(home, "b2", e[1])  # new batches point elsewhere
    write_embeddings(home, "b3", e[1])
    request = tick(home, encoder_retrain_sensor, instance)
    assert request.tags["lensless/reason"] == "embedding_drift" and float(request.tags["lensless/drift"]) > 0.15


def test_reranker_sensor_engagement_and_regression(home):
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(tick(home, reranker_retrain_sensor, instance), dg.SkipReason)
    events = pl.DataFrame({"user_id": ["u"] * 100, "image_id": ["a"] * 100, "event": ["click"] * 100,
                           "ts": [datetime.now(timezone.utc)] * 100}, schema=EVENT_SCHEMA)
    write_table(home, "engagement_events", events)
    report(instance, "gutted_reranker", engagement_events=90)
    assert isinstance(tick(home, reranker_retrain_sensor, instance), dg.SkipReason)  # +11%
    report(instance, "evaluation_report", champion_ndcg_diff=-0.05, champion_ndcg_diff_ci_high=-0.01)
    request = tick(home, reranker_retrain_sensor, instance)
    assert request.tags["lensless/reason"] == "evaluation_regressed"
    assert tick(home, reranker_retrain_sensor, instance).run_key == request.run_key  # the same report: one retrain
    report(instance, "evaluation_report", champion_ndcg_diff=-0.08, champion_ndcg_diff_ci_high=-0.04)
    again = tick(home, reranker_retrain_sensor, instance)  # a later report regressed too: retrain again
    assert again.tags["lensless/reason"] == "evaluation_regressed" and again.run_key != request.run_key
    report(instance, "gutted_reranker", engagement_events=50)
    request = tick(home, reranker_retrain_sensor, instance)
    assert request.tags["lensless/reason"] == "new_engagement" and request.tags["lensless/new_events_fraction"] == "1.000"


def test_schedules_target_their_jobs(home):
    from orchestration.schedules import nightly_evaluation, weekly_retrain

    assert nightly_evaluation.cron_schedule == "0 2 * * *" and nightly_evaluation.job_name == "evaluation_job"
    assert weekly_retrain.cron_schedule == "0 3 * * 0" and weekly_retrain.job_name == "retrain_job"
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 29, 3, tzinfo=timezone.utc))
    requests = list(weekly_retrain.evaluate_tick(ctx).run_requests)
    assert len(requests) == 1 and requests[0].tags["lensless/reason"] == "weekly_schedule"
