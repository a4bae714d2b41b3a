"""Jobs: named asset selections people launch from the UI, schedules and sensors."""

import dagster as dg

from assets.ingestion.assets import image_batches

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=image_batches,
    description="Ingest one image batch and refresh the engagement log.",
)

# Retraining the encoder is enough to retrain everything: automation re-embeds every batch,
# rebuilds the index and training pairs, whose new data version retrains both rerankers.
retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets("image_encoder"),
    description="Retrain the encoder; automation carries the change through the whole graph.",
)

reranker_retrain_job = dg.define_asset_job(
    "reranker_retrain_job",
    selection=dg.AssetSelection.assets("gutted_reranker", "full_vlm_reranker", "sequential_reranker"),
    description="Retrain the gutted reranker, the full VLM and the sequential peer on the current groups.",
)

evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=dg.AssetSelection.groups("evaluation"),
    description="Candidates, reranking, the evaluation report and champion promotion.",
)
