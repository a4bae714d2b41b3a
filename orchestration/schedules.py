"""Schedules: a nightly evaluation report and a weekly full retrain, crons configurable by env."""

import os

import dagster as dg

from orchestration.jobs import evaluation_job, retrain_job

NIGHTLY_CRON = os.environ.get("LENSLESS_NIGHTLY_CRON", "0 2 * * *")
WEEKLY_CRON = os.environ.get("LENSLESS_WEEKLY_CRON", "0 3 * * 0")
TIMEZONE = os.environ.get("LENSLESS_TIMEZONE", "UTC")

nightly_evaluation = dg.ScheduleDefinition(
    name="nightly_evaluation",
    job=evaluation_job,
    cron_schedule=NIGHTLY_CRON,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    tags={"lensless/reason": "nightly_schedule"},
    description="Re-scores the candidates and writes a fresh evaluation report (LENSLESS_NIGHTLY_CRON).",
)

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule=WEEKLY_CRON,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    tags={"lensless/reason": "weekly_schedule"},
    description="Retrains the encoder and both rerankers; automation re-embeds, re-indexes and re-evaluates (LENSLESS_WEEKLY_CRON).",
)
