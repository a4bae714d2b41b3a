"""Jobs: named asset selections people launch from the UI, schedules, sensors and the command
line (every `lensless` command runs one of these, so its runs show under the job's name)."""

import dagster as dg

from assets.ingestion.assets import image_batches

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=image_batches,
    description="Ingest one image batch and refresh the engagement log.",
)

engagement_job = dg.define_asset_job(
    "engagement_job",
    selection=dg.AssetSelection.assets("engagement_events"),
    description="Refresh the engagement log from the registered engagement files.",
)

embed_job = dg.define_asset_job(
    "embed_job",
    selection=dg.AssetSelection.assets("image_embeddings"),
    partitions_def=image_batches,
    description="Embed one image batch with the current encoder.",
)

train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.groups("retrieval", "reranker"),
    description="The FAISS index, the training pairs and user histories, and the three rerankers.",
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
