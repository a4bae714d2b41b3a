"""The whole graph, stage by stage, through Dagster on the persistent instance.

Used by `lensless demo`, `lensless run` and `lensless ingest`. Each stage is an ordinary
Dagster run of asset groups (so the UI shows runs, lineage and metadata afterwards) and prints
a header, so long work shows progress on the terminal; Dagster's INFO logs stream below each
header.
"""

import os
import sys
import time

import dagster as dg

from assets.evaluation.promotion import promotion_outcome
from assets.evaluation.report import latest_report
from assets.ingestion.assets import image_batches
from assets.ingestion.engagement import load_engagement_file, register_source
from assets.ingestion.sources import (
    batches_to_ingest_again,
    list_source,
    new_entries,
    register_batch,
    register_watched,
)
from assets.store.files import Home
from assets.store.lake import read_table
from orchestration.instance import get_instance
from orchestration.runner import materialize_assets, raise_failures

GATE = "challenger_not_worse"  # the blocking check whose failure is an outcome, not an error
TRAIN_INDEX_AND_RERANKERS = dg.AssetSelection.groups("retrieval", "reranker")
EVALUATION = dg.AssetSelection.groups("evaluation")


def step(n: int, total: int, text: str) -> None:
    """A progress header on stderr."""
    print(f"\n[{n}/{total}] {text}", file=sys.stderr, flush=True)


def resume_unfinished(home: Home) -> list[str]:
    """Ingest every batch an earlier command froze but did not finish (killed mid-decode, say),
    so none of its files is lost, and every batch whose duplicates lost the image they repeat
    (`orphaned_batches`), so that image stays in the lake; returns those batches."""
    again = batches_to_ingest_again(home)
    for batch, why in again.items():
        print(f"batch {batch}: {why}; ingesting it now", file=sys.stderr)
        get_instance().add_dynamic_partitions(image_batches.name, [batch])
        materialize_assets(["raw_images"], "ingest_job", partition_key=batch)
    return list(again)


def _summary(home: Home, batches: list[str]) -> dict:
    quarantine = read_table(home, "quarantine", batches)
    return {
        "batch": batches[-1] if batches else None,
        "ingested": read_table(home, "raw_images", batches).height,
        "duplicates": read_table(home, "duplicates", batches).height,
        "quarantined": dict(sorted(quarantine.group_by("reason").len().iter_rows())),
        "skipped": read_table(home, "skipped", batches).height,
    }


def ingest(home: Home, source: str, engagement: str | None = None, label_depth: int = 1,
           limit: int | None = None) -> dict:
    """Finish any interrupted batch, cut the source's new files into one batch, ingest it and
    refresh engagement; returns the summary (`resumed` lists the batches finished first)."""
    if limit is not None and limit < 1:  # before anything is registered
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if engagement:  # checked (and refused, naming what is wrong) before anything is ingested
        engagement = os.path.abspath(engagement) if "://" not in engagement else engagement
        load_engagement_file(engagement)
    resumed = resume_unfinished(home)
    listing = list_source(source, label_depth=label_depth)
    if listing.files.height + listing.skipped.height == 0:
        why = " (fsspec lists a URL that does not exist, or whose host does not answer, as empty)" if "://" in source else ""
        raise ValueError(f"source {source!r} holds no files{why}: nothing to ingest, and it is not watched")
    if engagement:  # registered only with a source that holds files
        register_source(home, engagement)
    fresh = new_entries(home, listing)
    if limit is not None:
        files = fresh.filter(fresh["skipped_reason"].is_null())
        if files.height > limit:  # deterministic sample: the same files every time
            keep = set(files.sample(limit, seed=0)["uri"].to_list())
            fresh = fresh.filter(fresh["uri"].is_in(list(keep)) | fresh["skipped_reason"].is_not_null())
    register_watched(home, source, label_depth)
    batches = list(resumed)
    if fresh.height == 0:
        print(f"no new files in {source} ({listing.files.height} listed, all already ingested)", file=sys.stderr)
    else:
        batch = register_batch(home, fresh)
        get_instance().add_dynamic_partitions(image_batches.name, [batch])
        print(f"batch {batch}: {fresh.height} files from {source}", file=sys.stderr)
        materialize_assets(["raw_images"], "ingest_job", partition_key=batch)
        batches.append(batch)
    materialize_assets(["engagement_events"], "engagement_job")
    return {**_summary(home, batches), "resumed": resumed}


def run_all(home: Home, source: str, engagement: str | None = None, limit: int | None = None,
            run_config: dict | None = None, force: bool = False) -> dict:
    """Ingest `source`, then train, embed, index, rerank and evaluate; returns the report dict.
    Each step leaves out the assets that are up to date (`runner.up_to_date`: same code,
    inputs and settings as their last materialisation) unless `force`."""
    skip = not force
    started = time.perf_counter()
    step(1, 5, f"ingesting {source}")
    summary = ingest(home, source, engagement, limit=limit)
    print(f"ingested {summary}", file=sys.stderr)
    step(2, 5, "training the in-house image encoder")
    materialize_assets(["image_encoder"], "retrain_job", run_config=run_config, skip_up_to_date=skip)
    keys = get_instance().get_dynamic_partitions(image_batches.name)
    step(3, 5, f"embedding {len(keys)} batch(es) with the new encoder")
    for key in keys:
        materialize_assets(["image_embeddings"], "embed_job", partition_key=key, run_config=run_config,
                           skip_up_to_date=skip)
    step(4, 5, "index, training pairs, gutted and full-VLM rerankers")
    materialize_assets(TRAIN_INDEX_AND_RERANKERS, "train_job", run_config=run_config, skip_up_to_date=skip)
    step(5, 5, "candidates, reranking, evaluation report, champion")
    promotion = evaluate_and_promote(home, run_config, skip_up_to_date=skip)
    report = latest_report(home)
    report["_promotion"] = promotion
    report["_seconds"] = time.perf_counter() - started
    return report


def evaluate_and_promote(home: Home, run_config: dict | None = None, skip_up_to_date: bool = False) -> str:
    """Candidates, reranking, the report and the champion; returns one line on the champion.

    A challenger that the blocking `challenger_not_worse` check stops is an outcome, not an
    error: the report exists and the old champion (or, before one, retrieval order) keeps
    serving. Any other failure raises `StepFailed` naming the step and its error.
    """
    result = materialize_assets(EVALUATION, "evaluation_job", run_config=run_config, raise_on_error=False,
                                skip_up_to_date=skip_up_to_date)
    if result is not None:
        raise_failures(result, allowed_checks={GATE})
    return promotion_outcome(home, latest_report(home))
