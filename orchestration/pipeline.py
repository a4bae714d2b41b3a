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
    result = materialize_assets(DOWNSTREAM[4:], run_config=_only(run_config, DOWNSTREAM[4:]), raise_on_error=False)
    promotion = _promotion_outcome(result)
    report = latest_report()
    report["_promotion"] = promotion
    print(report["_promotion"], file=sys.stderr)
    report["_seconds"] = time.perf_counter() - started
    return report


def _promotion_outcome(result) -> str:
    """One line on the champion after step 5. A challenger the blocking `challenger_not_worse`
    check stopped is an outcome, not an error: the report exists and the old champion (or
    retrieval order) keeps serving. Any other failure raises, with the failed step's error."""
    from assets.model_store import pointers

    champion = pointers("reranker_champion")["current"]
    if result.success:
        return f"champion: {champion}"
    failed = set(result.get_failed_step_keys())
    gate = [e for e in result.get_asset_check_evaluations()
            if e.check_name == "challenger_not_worse" and not e.passed]
    if not gate or not all(k.endswith("challenger_not_worse") for k in failed):  # the check's own step
        errors = [e.event_specific_data.error for e in result.get_step_failure_events()]
        detail = "\n".join(err.to_string() for err in errors if err is not None)
        raise RuntimeError(f"run {result.run_id} failed at steps {sorted(failed)}:\n{detail}")
    serving = champion or "none (recommendations keep retrieval order)"
    challenger = pointers("gutted_reranker")["current"]
    return f"challenger {challenger} NOT promoted: {gate[0].description}; champion stays {serving}"


def _only(run_config: dict | None, assets: list[str]) -> dict | None:
    """The part of a whole-graph run config that concerns `assets`."""
    if not run_config:
        return None
    ops = {k: v for k, v in run_config.get("ops", {}).items() if k in assets}
    return {"ops": ops} if ops else None
