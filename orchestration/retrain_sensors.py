"""Sensors that request retraining, each request tagged with its reason.

- `encoder_retrain_sensor`: the catalog grew by more than LENSLESS_ENCODER_RETRAIN_FRACTION
  (default 0.25) since the encoder was trained, or the mean embedding of batches added since
  then drifted from the training-time mean by more than LENSLESS_EMBEDDING_DRIFT (default
  0.15, as 1 − cosine similarity of the two means).
- `reranker_retrain_sensor`: engagement grew by more than LENSLESS_RERANKER_RETRAIN_FRACTION
  (default 0.25) since the gutted reranker was trained, or the latest evaluation shows the
  challenger significantly worse than the champion (the paired CI lies below zero).

Both are off by default (turn them on in the UI: Automation → Sensors) and use run keys,
so one situation never requests two runs.
"""

import os

import dagster as dg
import numpy as np

from assets.ingestion.engagement import engagement_count
from assets.store.files import Home
from assets.store.lake import read_table, table_partitions
from assets.store.resource import LenslessHome


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _latest_metadata(instance, key: str) -> dict:
    return _latest(instance, key)[0]


def _latest(instance, key: str) -> tuple[dict, int | None]:
    """The metadata of the latest materialisation of `key` and its event's storage id (unique
    per materialisation, also for one reported outside a run); ({}, None) when there is none."""
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
    if not records or records[0].asset_materialization is None:
        return {}, None
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}, records[0].storage_id


def embedding_drift(home: Home, trained_batches: set[str]) -> float | None:
    """1 − cos(mean embedding of batches after training, mean of the batches trained on)."""
    old, new = [], []
    for key in table_partitions(home, "image_embeddings"):
        emb = read_table(home, "image_embeddings", [key])["embedding"].to_numpy()
        (old if key in trained_batches else new).append(emb)
    if not old or not new:
        return None
    a, b = np.concatenate(old).mean(0), np.concatenate(new).mean(0)
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@dg.sensor(name="encoder_retrain_sensor", asset_selection=["image_encoder"], minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Retrains image_encoder when the catalog grew past LENSLESS_ENCODER_RETRAIN_FRACTION "
                       "or new batches' embeddings drifted past LENSLESS_EMBEDDING_DRIFT.")
def encoder_retrain_sensor(context: dg.SensorEvaluationContext, lensless_home: LenslessHome):
    """Retrain the encoder when the catalog grew past a fraction, or embeddings drifted."""
    meta = _latest_metadata(context.instance, "image_encoder")
    if "catalog_images" not in meta:
        return dg.SkipReason("no encoder trained yet: automation trains the first one")
    home = lensless_home.get()
    now = read_table(home, "raw_images").height
    grown = (now - meta["catalog_images"]) / max(1, meta["catalog_images"])
    fraction = _env("LENSLESS_ENCODER_RETRAIN_FRACTION", 0.25)
    if grown > fraction:
        return dg.RunRequest(run_key=f"encoder-growth-{now}",
                             tags={"lensless/reason": "new_images", "lensless/new_images_fraction": f"{grown:.3f}"})
    drift = embedding_drift(home, set(str(meta.get("trained_batches", "")).split(",")))
    threshold = _env("LENSLESS_EMBEDDING_DRIFT", 0.15)
    if drift is not None and drift > threshold:
        return dg.RunRequest(run_key=f"encoder-drift-{now}",
                             tags={"lensless/reason": "embedding_drift", "lensless/drift": f"{drift:.3f}"})
    return dg.SkipReason(f"catalog grew {grown:.1%} (threshold {fraction:.0%}), drift {drift} (threshold {threshold})")


@dg.sensor(name="reranker_retrain_sensor",
           asset_selection=["gutted_reranker", "full_vlm_reranker", "sequential_reranker"],
           minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Retrains the rerankers (gutted, full VLM, sequential peer) when engagement grew past LENSLESS_RERANKER_RETRAIN_FRACTION "
                       "or the latest report shows the challenger significantly worse than the champion.")
def reranker_retrain_sensor(context: dg.SensorEvaluationContext, lensless_home: LenslessHome):
    """Retrain the rerankers on new engagement past a fraction, or when evaluation regressed."""
    meta = _latest_metadata(context.instance, "gutted_reranker")
    if "engagement_events" not in meta:
        return dg.SkipReason("no gutted reranker trained yet: automation trains the first one")
    events = engagement_count(lensless_home.get())
    grown = (events - meta["engagement_events"]) / max(1, meta["engagement_events"])
    fraction = _env("LENSLESS_RERANKER_RETRAIN_FRACTION", 0.25)
    if grown > fraction:
        return dg.RunRequest(run_key=f"reranker-engagement-{events}",
                             tags={"lensless/reason": "new_engagement", "lensless/new_events_fraction": f"{grown:.3f}"})
    report, event_id = _latest(context.instance, "evaluation_report")
    if report.get("champion_ndcg_diff_ci_high") is not None and report["champion_ndcg_diff_ci_high"] < 0:
        return dg.RunRequest(run_key=f"reranker-regression-{event_id}",  # one retrain per regressed report
                             tags={"lensless/reason": "evaluation_regressed",
                                   "lensless/ndcg_diff": f"{report.get('champion_ndcg_diff', 0):.4f}"})
    return dg.SkipReason(f"engagement grew {grown:.1%} (threshold {fraction:.0%}); no regression")
