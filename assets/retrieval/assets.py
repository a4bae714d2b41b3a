"""Retrieval asset: `faiss_index`, tuned to a recall target, grown incrementally per batch."""

import dagster as dg

from assets.embeddings.assets import image_embeddings
from assets.plots import md_table
from assets.retrieval.index_store import IndexConfig, load_state, update_index
from assets.settings import settings_metadata
from assets.store.lake import read_table, table_partitions
from assets.store.models import pointers
from assets.store.resource import LenslessHome
from index.threads import configure_threads


class IndexRunConfig(dg.Config):
    """Run knobs; defaults live in `assets.retrieval.index_store.IndexConfig`."""

    target_recall: float = IndexConfig.target_recall
    memory_budget_mb: int = 0  # 0: no budget
    build_budget_s: float = IndexConfig.build_budget_s  # a slower candidate build is rejected
    tuning_queries: int = IndexConfig.tuning_queries


@dg.asset(
    group_name="retrieval",
    kinds={"faiss"},
    deps=[image_embeddings],
    code_version="faiss_index-v3",
)
def faiss_index(context: dg.AssetExecutionContext, config: IndexRunConfig,
                lensless_home: LenslessHome) -> dg.MaterializeResult:
    """FAISS index over every embedding partition, the fastest candidate factory that meets the target.

    A rebuild builds and tunes every candidate for N, d and the budgets (`index.build`
    search space) and keeps the fastest meeting `target_recall`; `candidates` says why.
    A new batch adds only its vectors; a new encoder, N outgrowing the factory or quantizer
    drift rebuilds. Search parameters are tuned to reach `target_recall` recall@10 against
    exact search at the highest QPS. Files: one generation `indexes/<generation>/` (`faiss.index`,
    `ids.parquet`, `state.json`), made current by `indexes/current.json`.
    """
    configure_threads()
    home = lensless_home.get()
    encoder = pointers(home, "image_encoder")["current"]
    partitions = {}
    for key in table_partitions(home, "image_embeddings"):
        frame = read_table(home, "image_embeddings", [key])
        stale = set(frame["encoder_version"].unique()) - {encoder}
        if stale:
            raise ValueError(f"image_embeddings partition {key} was embedded with encoder {sorted(stale)}, "
                             f"current is {encoder}: rematerialise image_embeddings for it first")
        partitions[key] = frame
    if not partitions:
        raise ValueError("no image_embeddings partitions: materialise image_embeddings first")
    cfg = IndexConfig(target_recall=config.target_recall, tuning_queries=config.tuning_queries,
                      memory_budget_bytes=config.memory_budget_mb * 2**20 or None,
                      build_budget_s=config.build_budget_s)
    report = update_index(home, partitions, encoder, cfg, log=context.log.info)
    rows = [{"metric": k, "value": report[k]} for k in
            ("factory", "params", "n", "mode", "reason", "recall_at_10", "qps", "exact_qps", "bytes_per_vector")]
    return dg.MaterializeResult(metadata={
        "generation": report["generation"], **settings_metadata(config),
        "factory": report["factory"], "search_params": report["params"] or "(exact)", "n": report["n"],
        "mode": report["mode"], "recall_at_10": report["recall_at_10"], "target_recall": report["target_recall"],
        "qps": report["qps"], "exact_qps": report["exact_qps"], "speedup_vs_exact": report["speedup_vs_exact"],
        "bytes_per_vector": report["bytes_per_vector"], "build_seconds": report["build_seconds"],
        "summary": dg.MetadataValue.md(md_table(rows)),
        "candidates": dg.MetadataValue.md(md_table(report["candidates"])),
    })


@dg.asset_check(asset=faiss_index, blocking=True, description="Measured recall@10 meets the target.")
def index_recall(context: dg.AssetCheckExecutionContext, lensless_home: LenslessHome) -> dg.AssetCheckResult:
    """Blocks downstream assets when the tuned index misses its recall@10 target (the tuner's
    own tie-aware measurement, stored once in the index state)."""
    state = load_state(lensless_home.get())
    if state is None:
        return dg.AssetCheckResult(passed=False, description="no index state: materialise faiss_index")
    return dg.AssetCheckResult(passed=bool(state["met_target"]),
                               metadata={"recall_at_10": state["recall_at_10"], "target": state["target_recall"]})
