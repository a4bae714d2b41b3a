"""The whole graph, step by step, through Dagster on the persistent instance.

Used by `lensless demo`, `lensless run` and `lensless ingest`. Each step is an ordinary
Dagster run (so the UI shows runs, lineage and metadata afterwards) and prints a header, so
long work shows progress on the terminal; Dagster's INFO logs stream below each header.
"""

import os
import sys
import time

from orchestration.instance import get_instance
from orchestration.runner import materialize_assets

DOWNSTREAM = ["faiss_index", "training_pairs", "gutted_reranker", "full_vlm_reranker", "candidates",
              "reranked_candidates", "evaluation_report", "reranker_champion"]


def step(n: int, total: int, text: str) -> None:
    """A progress header on stderr."""
    print(f"\n[{n}/{total}] {text}", file=sys.stderr, flush=True)


def ingest(source: str, engagement: str | None = None, label_depth: int = 1, limit: int | None = None) -> dict:
    """Cut the source's new files into one batch, ingest it, refresh engagement; returns the summary."""
    from assets.engagement import register_source
    from assets.lake import read_table
    from assets.sources import list_source, new_entries, register_batch, register_watched

    listing = list_source(source, label_depth=label_depth)
    fresh = new_entries(listing)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        files = fresh.filter(fresh["skipped_reason"].is_null())
        if files.height > limit:  # deterministic sample: the same files every time
            keep = set(files.sample(limit, seed=0)["uri"].to_list())
            fresh = fresh.filter(fresh["uri"].is_in(list(keep)) | fresh["skipped_reason"].is_not_null())
    register_watched(source)
    if engagement:
        register_source(os.path.abspath(engagement) if "://" not in engagement else engagement)
    if fresh.height == 0:
        print(f"no new files in {source} ({listing.files.height} listed, all already ingested)", file=sys.stderr)
        materialize_assets(["engagement_events"])
        return {"batch": None, "ingested": 0, "duplicates": 0, "quarantined": {}, "skipped": 0}
    batch = register_batch(fresh)
    get_instance().add_dynamic_partitions("image_batches", [batch])
    print(f"batch {batch}: {fresh.height} files from {source}", file=sys.stderr)
    materialize_assets(["raw_images"], partition_key=batch)
    materialize_assets(["engagement_events"])
    quarantine = read_table("quarantine", [batch])
    return {
        "batch": batch,
        "ingested": read_table("raw_images", [batch]).height,
        "duplicates": read_table("duplicates", [batch]).height,
        "quarantined": dict(sorted(quarantine.group_by("reason").len().iter_rows())),
        "skipped": read_table("skipped", [batch]).height,
    }


def run_all(source: str, engagement: str | None = None, limit: int | None = None, run_config: dict | None = None) -> dict:
    """Ingest `source`, then train, embed, index, rerank and evaluate; returns the report dict."""
    from assets.report import latest_report

    started = time.perf_counter()
    step(1, 5, f"ingesting {source}")
    summary = ingest(source, engagement, limit=limit)
    print(f"ingested {summary}", file=sys.stderr)
    step(2, 5, "training the in-house image encoder")
    materialize_assets(["image_encoder"], run_config=_only(run_config, ["image_encoder"]))
    keys = get_instance().get_dynamic_partitions("image_batches")
    step(3, 5, f"embedding {len(keys)} batch(es) with the new encoder")
    for key in keys:
        materialize_assets(["image_embeddings"], partition_key=key)
    step(4, 5, "index, training pairs, gutted and full-VLM rerankers")
    materialize_assets(DOWNSTREAM[:4], run_config=_only(run_config, DOWNSTREAM[:4]))
    step(5, 5, "candidates, reranking, evaluation report, champion")
    promotion = evaluate_and_promote(run_config)
    report = latest_report()
    report["_promotion"] = promotion
    report["_seconds"] = time.perf_counter() - started
    return report


def evaluate_and_promote(run_config: dict | None = None) -> str:
    """Candidates, reranking, the report and the champion; returns one line on the champion.

    A challenger that the blocking `challenger_not_worse` check stops is an outcome, not an
    error: the report exists and the old champion (or, before one, retrieval order) keeps
    serving. Any other failure raises as it was raised.
    """
    from dagster._core.errors import (
        DagsterAssetCheckFailedError,  # what a failed blocking check raises
    )

    from assets.report import latest_report

    try:
        materialize_assets(DOWNSTREAM[4:], run_config=_only(run_config, DOWNSTREAM[4:]))
    except DagsterAssetCheckFailedError as e:
        if "challenger_not_worse" not in str(e):
            raise
    return promotion_outcome(latest_report())


def promotion_outcome(report: dict) -> str:
    """`champion: X` when the report's challenger passed the gate, else why it did not."""
    from assets.model_store import pointers
    from assets.report import promotion_decision

    champion = pointers("reranker_champion")["current"]
    passed, why = promotion_decision(report)
    if passed:
        return f"champion: {champion}"
    challenger = report["challenger"]["version"]
    if challenger == champion:  # promoted earlier, by hand or under an older rule
        return f"champion {champion} fails the promotion check now: {why}; it serves until `lensless promote` or `rollback`"
    serving = champion or "none (recommendations keep retrieval order)"
    return f"challenger {challenger} NOT promoted: {why}; champion stays {serving}"


def _only(run_config: dict | None, assets: list[str]) -> dict | None:
    """The part of a whole-graph run config that concerns `assets`."""
    if not run_config:
        return None
    ops = {k: v for k, v in run_config.get("ops", {}).items() if k in assets}
    return {"ops": ops} if ops else None
