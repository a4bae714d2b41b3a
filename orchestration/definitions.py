"""The lensless code location. Thin on purpose: wiring only."""

import dagster as dg

from assets.embeddings import assets as embeddings
from assets.evaluation import assets as evaluation
from assets.ingestion import assets as ingestion
from assets.reranker import assets as reranker
from assets.retrieval import assets as retrieval
from assets.store.resource import LenslessHome
from orchestration.automation import automation_sensor, with_automation
from orchestration.executors import executor
from orchestration.failures import run_failure_logger
from orchestration.instance import ensure_dagster_home
from orchestration.jobs import (
    embed_job,
    engagement_job,
    evaluation_job,
    ingest_job,
    reranker_retrain_job,
    retrain_job,
    train_job,
)
from orchestration.logs import console
from orchestration.retrain_sensors import encoder_retrain_sensor, reranker_retrain_sensor
from orchestration.schedules import nightly_evaluation, weekly_retrain
from orchestration.sensors import new_images_sensor

ensure_dagster_home()

STAGES = [ingestion, embeddings, retrieval, reranker, evaluation]  # one assets.py per Dagster group

defs = dg.Definitions(
    assets=with_automation(dg.load_assets_from_modules(STAGES)),
    asset_checks=dg.load_asset_checks_from_modules(STAGES),
    jobs=[ingest_job, engagement_job, retrain_job, embed_job, train_job, reranker_retrain_job, evaluation_job],
    schedules=[nightly_evaluation, weekly_retrain],
    executor=executor(),
    sensors=[new_images_sensor, automation_sensor, run_failure_logger, encoder_retrain_sensor,
             reranker_retrain_sensor],
    resources={"lensless_home": LenslessHome()},
    loggers={"console": console},
)
