"""Reranker assets: `training_pairs`, `gutted_reranker` and the `full_vlm_reranker` baseline."""

import time

import dagster as dg

from assets.compute import GPU_STEP_TAGS, TRAIN_POOL
from assets.ingestion.assets import engagement_events
from assets.ingestion.coengagement import SplitConfig
from assets.ingestion.engagement import engagement_count
from assets.plots import line_plot, md_image, md_table
from assets.reranker.aligned import aligned_catalog, aligned_pixels
from assets.reranker.pairs import PairConfig, budget_groups, build_pairs
from assets.retrieval.assets import faiss_index
from assets.store.lake import write_table
from assets.store.models import pointers, save_version, set_current
from assets.store.resource import LenslessHome
from models.cost import measure_costs
from models.full_vlm import FullVLMConfig, build_full_vlm
from models.gutted_vlm import GuttedConfig, build_gutted
from models.train_reranker import RerankerTrainConfig, save_reranker, train_reranker


class PairsRunConfig(dg.Config):
    """Run knobs for mining; defaults live in `assets.reranker.pairs.PairConfig`."""

    negatives: int = PairConfig.negatives
    max_groups_per_query: int = PairConfig.max_groups_per_query
    time_quantile: float = SplitConfig.time_quantile


@dg.asset(
    group_name="reranker",
    kinds={"duckdb", "parquet"},
    deps=[engagement_events, faiss_index],
    code_version="training_pairs-v3",
)
def training_pairs(context: dg.AssetExecutionContext, config: PairsRunConfig,
                   lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Groups of one query, one positive and n hard negatives, split by user and time.

    Positives are co-engaged images (counted in DuckDB over the engagement log), or
    same-label images when there is no engagement; hard negatives are the query's index
    neighbours that are not positives. Each group stores its strength (users behind the
    query-positive pair), so a training budget takes the strongest groups first. Writes
    `training_pairs` (train and val groups) and `evaluation_queries` (held-out queries and
    their relevant images). The data version is the encoder's: the rerankers' inputs live in
    its embedding space, so a new encoder retrains them.
    """
    home = lensless_home.get()
    cfg = PairConfig(negatives=config.negatives, max_groups_per_query=config.max_groups_per_query,
                     split=SplitConfig(time_quantile=config.time_quantile))
    groups, queries, stats = build_pairs(home, cfg)
    if stats["train_groups"] == 0 or stats["val_groups"] == 0:
        raise ValueError(f"not enough relevance to train a reranker: {stats}")
    write_table(home, "training_pairs", groups)
    write_table(home, "evaluation_queries", queries)
    context.log.info(f"training pairs: {stats}")
    encoder = pointers(home, "image_encoder")["current"]
    return dg.MaterializeResult(data_version=dg.DataVersion(f"encoder-{encoder}"), metadata={
        **{k: v for k, v in stats.items() if isinstance(v, int)},
        "relevance_source": stats["source"], "negatives_per_group": cfg.negatives,
        "dagster/row_count": groups.height,
    })


class RerankerRunConfig(dg.Config):
    """Run knobs shared by both rerankers (same budget); defaults live in models/."""

    # "tiny" (random init, the default: nothing is downloaded) or a local Qwen3-VL checkpoint
    # directory; the gutted model reads only its language-model tensors, the full VLM all of them
    base: str = GuttedConfig.base
    num_tokens: int = GuttedConfig.num_tokens
    # The pipeline's budget, identical for both models, sized so `lensless demo` fits on 2 CPU
    # cores (the full VLM dominates); RerankerTrainConfig's 4+4 epochs are for longer runs.
    stage1_epochs: int = 2
    stage2_epochs: int = 2
    max_train_groups: int = 1000
    max_val_groups: int = 300  # validation is scored at every evaluation: keep it cheap
    seed: int = 0
    device: str = RerankerTrainConfig.device  # "auto" (the GPU when torch sees one), "cpu", "cuda:N"


def _train(context, home, kind: str, scorer, features, ids: list[str],
           config: RerankerRunConfig) -> dg.MaterializeResult:
    """Train `scorer` on the stored groups (rows of `ids`), measure its cost, save it; shared by both assets."""
    train, val = budget_groups(home, ids, config.max_train_groups, config.max_val_groups, config.seed)
    context.log.info(f"{kind}: {len(train)} train groups, {len(val)} val groups")
    cfg = RerankerTrainConfig(stage1_epochs=config.stage1_epochs, stage2_epochs=config.stage2_epochs,
                              seed=config.seed, device=config.device)
    started = time.perf_counter()
    metrics = train_reranker(scorer, features, train, val, cfg, progress=lambda m: context.log.info(f"{kind}: {m}"))
    seconds = time.perf_counter() - started
    cost = measure_costs({kind: (scorer, features)}, val[:4, 0], val[:4, 1:])[kind]
    version = save_version(home, kind, lambda d: save_reranker(scorer, d, metrics))
    set_current(home, kind, version, reason=f"run {context.run_id}")
    plots = {
        "loss_curve": dg.MetadataValue.md(md_image(line_plot(
            {"train loss": [c["loss"] for c in metrics["loss_curve"]]}, f"{kind}: listwise loss"))),
        "val_ndcg_curve": dg.MetadataValue.md(md_image(line_plot(
            {"val NDCG@10": [c["val_ndcg10"] for c in metrics["val_curve"]]}, f"{kind}: validation NDCG@10",
            xlabel="evaluation"))),
    }
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "version": version, "val_ndcg_at_10": float(metrics["best_val_ndcg10"]),
        "engagement_events": engagement_count(home),
        "trained_parameters": int(metrics["trained_params"]), "train_seconds": round(seconds, 1),
        "train_device": metrics["device"],
        **{k: float(v) for k, v in cost.items() if not isinstance(v, list)},
        "cost": dg.MetadataValue.md(md_table([{"metric": k, "value": v} for k, v in cost.items()])),
        **plots,
    })


# Both rerankers train on the same groups, in the one-slot `train` pool, on a GPU pod under k8s.
RERANKER_ASSET = {"group_name": "reranker", "kinds": {"pytorch", "safetensors"}, "deps": [training_pairs],
                  "pool": TRAIN_POOL, "op_tags": GPU_STEP_TAGS}


@dg.asset(code_version="gutted_reranker-v2", **RERANKER_ASSET)
def gutted_reranker(context: dg.AssetExecutionContext, config: RerankerRunConfig,
                    lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Qwen3-VL without its vision tower, reading our embeddings as k soft tokens.

    Stage 1 trains the projector, stage 2 LoRA plus the projector, with listwise softmax
    cross-entropy and early stopping on validation NDCG@10. The checkpoint holds only the
    trained tensors and the base model's identity (`models/gutted_reranker/<version>/`).
    """
    home = lensless_home.get()
    frame, emb = aligned_catalog(home)
    scorer = build_gutted(GuttedConfig(base=config.base, embed_dim=emb.shape[1], num_tokens=config.num_tokens,
                                       seed=config.seed))
    return _train(context, home, "gutted_reranker", scorer, emb, frame["image_id"].to_list(), config)


@dg.asset(code_version="full_vlm_reranker-v2", **RERANKER_ASSET)
def full_vlm_reranker(context: dg.AssetExecutionContext, config: RerankerRunConfig,
                      lensless_home: LenslessHome) -> dg.MaterializeResult:
    """The baseline: the same Qwen3-VL with its vision tower, reading pixels (224 px, 49 tokens).

    Same prompt, head, loss and training budget as the gutted model; it exists so the
    evaluation report can compare quality and cost.
    """
    home = lensless_home.get()
    frame, _ = aligned_catalog(home)
    pixels = aligned_pixels(home, frame)
    scorer = build_full_vlm(FullVLMConfig(base=config.base, seed=config.seed))
    return _train(context, home, "full_vlm_reranker", scorer, pixels, frame["image_id"].to_list(), config)
