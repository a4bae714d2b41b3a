"""The lensless code location. Thin on purpose: wiring only."""

import dagster as dg

from assets import embeddings, evaluation, ingestion, reranking, retrieval
from orchestration.automation import automation_sensor, with_automation
from orchestration.executors import executor
from orchestration.failures import run_failure_logger
from orchestration.instance import ensure_dagster_home
from orchestration.jobs import evaluation_job, ingest_job, reranker_retrain_job, retrain_job
from orchestration.retrain_sensors import encoder_retrain_sensor, reranker_retrain_sensor
from orchestration.schedules import nightly_evaluation, weekly_retrain
from orchestration.sensors import new_images_sensor

ensure_dagster_home()

ASSET_MODULES = [ingestion, embeddings, retrieval, reranking, evaluation]

defs = dg.Definitions(
    assets=with_automation(dg.load_assets_from_modules(ASSET_MODULES)),
    asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
    jobs=[ingest_job, retrain_job, reranker_retrain_job, evaluation_job],
    schedules=[nightly_evaluation, weekly_retrain],
    executor=executor(),
    sensors=[new_images_sensor, automation_sensor, run_failure_logger, encoder_retrain_sensor,
             reranker_retrain_sensor],
)
