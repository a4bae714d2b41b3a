"""Reranker assets: the training data of both tasks (`training_pairs` for related images,
`user_histories` for a user), the `gutted_reranker`, and the two it is compared with: the
`full_vlm_reranker` baseline on pixels and the `sequential_reranker` peer without an LLM."""

import time

import dagster as dg

from assets.compute import GPU_STEP_TAGS, TRAIN_POOL
from assets.ingestion.assets import engagement_events
from assets.ingestion.coengagement import SplitConfig
from assets.ingestion.engagement import engagement_count
from assets.plots import line_plot, md_image, md_table
from assets.reranker.aligned import aligned_catalog, aligned_pixels, engagement_prior
from assets.reranker.histories import HistoryConfig
from assets.reranker.pairs import PairConfig, build_pairs, build_user_pairs, training_set
from assets.retrieval.assets import faiss_index
from assets.retrieval.candidates import save_mix
from assets.settings import settings_metadata
from assets.store.lake import write_table
from assets.store.models import pointers, progress_file, save_version, set_current
from assets.store.resource import LenslessHome
from models.cost import counted_costs
from models.full_vlm import FullVLMConfig, build_full_vlm
from models.gutted_vlm import GuttedConfig, build_gutted
from models.progress import progress_line
from models.rerankers import save_reranker
from models.sequential import SequentialConfig, build_sequential
from models.train_reranker import RerankerTrainConfig, train_reranker


class PairsRunConfig(dg.Config):
    """Run knobs for mining; defaults live in `assets.reranker.pairs.PairConfig`."""

    negatives: int = PairConfig.negatives
    max_groups_per_query: int = PairConfig.max_groups_per_query
    time_quantile: float = SplitConfig.time_quantile


@dg.asset(
    group_name="reranker",
    kinds={"duckdb", "parquet"},
    deps=[engagement_events, faiss_index],
    code_version="training_pairs-v4",
)
def training_pairs(context: dg.AssetExecutionContext, config: PairsRunConfig,
                   lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Groups of one query, one positive and n hard negatives, split by user and time.

    Positives are co-engaged images (counted in DuckDB over the engagement log), or
    same-label images when there is no engagement; hard negatives are the query's other
    candidates: index neighbours merged with the most engaged images, at the popular share
    with the best validation recall. Each group stores its strength (users behind the
    query-positive pair), so a training budget takes the strongest groups first. Writes
    `training_pairs` (train and val groups), `evaluation_queries` (held-out queries and
    their relevant images) and the related-images rows of `candidate_mix`. The data version
    is the encoder's: the rerankers' inputs live in its embedding space, so a new encoder
    retrains them.
    """
    home = lensless_home.get()
    cfg = PairConfig(negatives=config.negatives, max_groups_per_query=config.max_groups_per_query,
                     split=SplitConfig(time_quantile=config.time_quantile))
    tables = build_pairs(home, cfg)
    stats, mix, groups = tables.pop("stats"), tables.pop("mix"), tables["training_pairs"]
    if stats["train_groups"] == 0 or stats["val_groups"] == 0:
        raise ValueError(f"not enough relevance to train a reranker: {stats}")
    for name, table in tables.items():
        write_table(home, name, table)
    tried = save_mix(home, "images", mix)
    context.log.info(f"training pairs: {stats}")
    encoder = pointers(home, "image_encoder")["current"]
    return dg.MaterializeResult(data_version=dg.DataVersion(f"encoder-{encoder}"), metadata={
        **{k: v for k, v in stats.items() if isinstance(v, int)}, **settings_metadata(config),
        "relevance_source": stats["source"], "negatives_per_group": cfg.negatives,
        "popular_share": stats["popular_share"],
        "candidate_mix": dg.MetadataValue.md(md_table(tried.to_dicts())),
        "dagster/row_count": groups.height,
    })


class UserHistoriesRunConfig(dg.Config):
    """Run knobs of the user task; defaults live in `assets.reranker.histories.HistoryConfig`."""

    history_length: int = HistoryConfig.length
    recent: int = HistoryConfig.recent
    target_share: float = HistoryConfig.target_share
    max_groups_per_user: int = 8
    time_quantile: float = SplitConfig.time_quantile


@dg.asset(
    group_name="reranker",
    kinds={"duckdb", "parquet"},
    deps=[engagement_events, faiss_index],
    code_version="user_histories-v1",
)
def user_histories(context: dg.AssetExecutionContext, config: UserHistoriesRunConfig,
                   lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Each user's last H engaged images and what they engaged next: the "for a user" task.

    Train and val users' last events before the cut-off are their targets; test users'
    targets are everything after it (a save counts 2, a click 1). A user's candidates are the
    index neighbours of their latest history images merged with popular images, at the share
    with the best recall on val users; groups pair a target among them with candidates that
    are not targets. Writes `user_histories`, `user_pairs` and the users' rows of
    `candidate_mix`. Without an engagement log the tables are empty and there is no user task.
    """
    home = lensless_home.get()
    cfg = HistoryConfig(length=config.history_length, recent=config.recent, target_share=config.target_share,
                        split=SplitConfig(time_quantile=config.time_quantile))
    tables = build_user_pairs(home, cfg, PairConfig(max_groups_per_query=config.max_groups_per_user, split=cfg.split))
    stats, mix = tables.pop("stats"), tables.pop("mix")
    for name, table in tables.items():
        write_table(home, name, table)
    tried = save_mix(home, "users", mix) if mix is not None else None
    context.log.info(f"user task: {stats}")
    encoder = pointers(home, "image_encoder")["current"]
    lengths = tables["user_histories"]["history"].list.len()
    return dg.MaterializeResult(data_version=dg.DataVersion(f"encoder-{encoder}"), metadata={
        **{k: v for k, v in stats.items() if isinstance(v, int)}, **settings_metadata(config),
        "popular_share": stats["popular_share"] if stats["popular_share"] is not None else "none (no users)",
        "mean_history_length": float(lengths.mean()) if len(lengths) else 0.0,
        **({"candidate_mix": dg.MetadataValue.md(md_table(tried.to_dicts()))} if tried is not None else {}),
        "dagster/row_count": tables["user_histories"].height,
    })


class RerankerRunConfig(dg.Config):
    """Run knobs shared by the three rerankers (same groups and budget); defaults live in models/."""

    # "tiny" (random init, the default: nothing is downloaded) or a local Qwen3-VL checkpoint
    # directory; the gutted model reads only its language-model tensors, the full VLM all of them
    base: str = GuttedConfig.base
    num_tokens: int = GuttedConfig.num_tokens
    # the gutted model reads a user's history as its H x k soft tokens (0) or as m tokens a
    # learned pool summarises them into (m > 0); bench/rerank_seeds.py --history-pool compares
    history_pool: int = GuttedConfig.history_pool
    # The pipeline's budget, identical for both models, sized so `lensless demo` fits on 2 CPU
    # cores (the full VLM dominates); RerankerTrainConfig's 4+4 epochs are for longer runs.
    stage1_epochs: int = 2
    stage2_epochs: int = 2
    max_train_groups: int = 1000  # related-images groups
    max_val_groups: int = 300  # validation is scored at every evaluation: keep it cheap
    max_user_train_groups: int = 500  # "for a user" groups, in the same batches
    max_user_val_groups: int = 150
    # The full VLM reads a history as pixels (49 tokens an image at 224 px) and trains on
    # the CPU in the demo: it sees the latest images of the history only (the report says
    # so, and gives the analytic cost at equal history).
    full_vlm_history: int = 2
    seed: int = 0
    device: str = RerankerTrainConfig.device  # "auto" (the GPU when torch sees one), "cpu", "cuda:N"


def _train(context, home, kind: str, scorer, features, frame, config: RerankerRunConfig, history: int,
           cfg: RerankerTrainConfig | None = None) -> dg.MaterializeResult:
    """Train `scorer` on both tasks' stored groups (rows of the aligned catalog `frame`; users
    read with their latest `history` images) with the engagement prior, measure its cost,
    save it; shared by the three reranker assets."""
    budgets = {"training_pairs": (config.max_train_groups, config.max_val_groups),
               "user_pairs": (config.max_user_train_groups, config.max_user_val_groups)}
    train, val, queries, val_is_user = training_set(home, frame["image_id"].to_list(), budgets, config.seed, history)
    prior = engagement_prior(home, frame)
    context.log.info(f"{kind}: {len(train)} train groups, {len(val)} val groups over {len(queries)} queries "
                     f"(images and users, histories of up to {history} images)")
    cfg = cfg or RerankerTrainConfig(stage1_epochs=config.stage1_epochs, stage2_epochs=config.stage2_epochs,
                                     seed=config.seed, device=config.device)
    started = time.perf_counter()
    code_version = context.assets_def.code_versions_by_key[context.asset_key]
    progress = progress_file(home, kind, code_version)  # a run killed in training is resumed, not restarted
    metrics = train_reranker(scorer, features, train, val, cfg, progress=lambda m: context.log.info(f"{kind}: {progress_line(m)}"),
                             prior=prior, queries=queries, val_is_user=val_is_user, progress_file=progress)
    metrics["history"] = history
    seconds = time.perf_counter() - started
    # counted costs only: the time per candidate is measured once, by evaluation_report,
    # interleaved with the systems it is compared with
    cost = counted_costs({kind: (scorer, features)}, queries[val[:4, 0]][:, -1], val[:4, 1:], prior=prior)[kind]
    version = save_version(home, kind, lambda d: save_reranker(scorer, d, metrics))
    set_current(home, kind, version, reason=f"run {context.run_id}")
    progress.clear()
    plots = {
        "loss_curve": dg.MetadataValue.md(md_image(line_plot(
            {"train loss": [c["loss"] for c in metrics["loss_curve"]]}, f"{kind}: listwise loss"))),
        "val_ndcg_curve": dg.MetadataValue.md(md_image(line_plot(
            {"val NDCG@10": [c["val_ndcg10"] for c in metrics["val_curve"]]}, f"{kind}: validation NDCG@10",
            xlabel="evaluation"))),
    }
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "version": version, "val_ndcg_at_10": float(metrics["best_val_ndcg10"]), **settings_metadata(config),
        "engagement_events": engagement_count(home), "engaged_images": int((prior > 0).sum()),
        "trained_parameters": int(metrics["trained_params"]), "train_seconds": round(seconds, 1),
        "train_device": metrics["device"],
        "resumed_at_step": metrics["resumed_at_step"] if metrics["resumed_at_step"] is not None else "no (a fresh run)",
        **{k: float(v) for k, v in cost.items() if not isinstance(v, list)},
        "cost": dg.MetadataValue.md(md_table([{"metric": k, "value": v} for k, v in cost.items()])),
        **plots,
    })


# The rerankers train on the same groups, in the one-slot `train` pool, on a GPU pod under k8s.
RERANKER_ASSET = {"group_name": "reranker", "kinds": {"pytorch", "safetensors"}, "deps": [training_pairs, user_histories],
                  "pool": TRAIN_POOL, "op_tags": GPU_STEP_TAGS}


@dg.asset(code_version="gutted_reranker-v5", **RERANKER_ASSET)
def gutted_reranker(context: dg.AssetExecutionContext, config: RerankerRunConfig,
                    lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Qwen3-VL without its vision tower, reading our embeddings as k soft tokens, and each
    candidate's engagement prior (train-split count, log2-bucketed) as one learned token.

    Stage 1 trains the projector, stage 2 LoRA plus the projector, with listwise softmax
    cross-entropy and early stopping on validation NDCG@10. The checkpoint holds only the
    trained tensors and the base model's identity (`models/gutted_reranker/<version>/`).
    """
    home = lensless_home.get()
    frame, emb = aligned_catalog(home)
    scorer = build_gutted(GuttedConfig(base=config.base, embed_dim=emb.shape[1], num_tokens=config.num_tokens,
                                       history_pool=config.history_pool, seed=config.seed))
    return _train(context, home, "gutted_reranker", scorer, emb, frame, config, HistoryConfig.length)


@dg.asset(code_version="full_vlm_reranker-v5", **RERANKER_ASSET)
def full_vlm_reranker(context: dg.AssetExecutionContext, config: RerankerRunConfig,
                      lensless_home: LenslessHome) -> dg.MaterializeResult:
    """The baseline: the same Qwen3-VL with its vision tower, reading pixels (224 px, 49 tokens).

    Same prompt (the engagement prior included), head, loss and training budget as the
    gutted model; it exists so the evaluation report can compare quality and cost.
    """
    home = lensless_home.get()
    frame, _ = aligned_catalog(home)
    pixels = aligned_pixels(home, frame)
    scorer = build_full_vlm(FullVLMConfig(base=config.base, seed=config.seed))
    return _train(context, home, "full_vlm_reranker", scorer, pixels, frame, config, config.full_vlm_history)


@dg.asset(code_version="sequential_reranker-v1", **RERANKER_ASSET)
def sequential_reranker(context: dg.AssetExecutionContext, config: RerankerRunConfig,
                        lensless_home: LenslessHome) -> dg.MaterializeResult:
    """The peer without a language model: a small SASRec-style transformer and MLP over the
    same embeddings, histories, prior and groups as the gutted model (`models/sequential.py`).

    It answers what the LLM adds: if it ranks as well, the report says so. Every parameter
    trains (no frozen base, no LoRA), for the gutted model's two stages' worth of epochs.
    """
    home = lensless_home.get()
    frame, emb = aligned_catalog(home)
    scorer = build_sequential(SequentialConfig(embed_dim=emb.shape[1], seed=config.seed))
    epochs = config.stage1_epochs + config.stage2_epochs
    cfg = RerankerTrainConfig(stage1_epochs=epochs, stage2_epochs=0, seed=config.seed, device=config.device)
    return _train(context, home, "sequential_reranker", scorer, emb, frame, config, HistoryConfig.length, cfg)
