"""Evaluation assets: `candidates`, `reranked_candidates`, `evaluation_report`, `reranker_champion`."""

from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl

from assets.embeddings import image_encoder
from assets.eval_metrics import list_metrics, paired_difference_ci, summarise
from assets.evaluation_data import evaluation_inputs, production_estimate, system_rankings
from assets.index_ops import load_index
from assets.model_store import current_dir, pointers, set_current
from assets.plots import md_image, md_table
from assets.report import (
    latest_report,
    promotion_decision,
    quality_cost_plot,
    summary_rows,
    write_report,
)
from assets.rerank_data import aligned_catalog, score_candidates
from assets.reranking import full_vlm_reranker, gutted_reranker, training_pairs
from assets.retrieval import faiss_index
from assets.storage import lake_path, read_parquet, write_parquet
from index.search import search
from models.train_reranker import load_reranker


class CandidatesConfig(dg.Config):
    """How many candidates per query, and how many held-out queries to evaluate."""

    k: int = 50
    max_queries: int = 400
    seed: int = 0


@dg.asset(group_name="evaluation", kinds={"faiss", "parquet"}, deps=[training_pairs, faiss_index],
          code_version="candidates-v1")
def candidates(context: dg.AssetExecutionContext, config: CandidatesConfig) -> dg.MaterializeResult:
    """The top-K images from `faiss_index` for every held-out evaluation query (itself excluded).

    Writes `lake/candidates.parquet` (query, rank, image_id, score = cosine similarity).
    """
    queries = read_parquet(lake_path("evaluation_queries"))
    if queries.height == 0:
        raise ValueError("no evaluation queries: training_pairs found no held-out relevance")
    if queries.height > config.max_queries:
        queries = queries.sample(config.max_queries, seed=config.seed).sort("query")
    frame, emb = aligned_catalog()
    ids = frame["image_id"].to_numpy()
    pos = {k: i for i, k in enumerate(ids)}
    rows = np.array([pos[q] for q in queries["query"]])
    index, _, _ = load_index()
    scores, found = search(index, emb[rows], config.k + 1)
    records = []
    for q, row, srow, frow in zip(queries["query"], rows, scores, found, strict=True):
        keep = [(s, i) for s, i in zip(srow, frow, strict=True) if i >= 0 and i != row][: config.k]
        records += [{"query": q, "rank": r + 1, "image_id": ids[i], "score": float(s)} for r, (s, i) in enumerate(keep)]
    table = pl.DataFrame(records)
    write_parquet(table, lake_path("candidates"))
    return dg.MaterializeResult(metadata={"queries": queries.height, "k": config.k, "dagster/row_count": table.height})


def _load_scorer(kind: str):
    return load_reranker(current_dir(kind))


@dg.asset(group_name="evaluation", kinds={"pytorch", "parquet"}, deps=[candidates, gutted_reranker],
          code_version="reranked_candidates-v1")
def reranked_candidates(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The candidates re-scored by the challenger gutted reranker (the product's output).

    Writes `lake/reranked_candidates.parquet` (query, image_id, retrieval_rank, score, rank).
    """
    cands = read_parquet(lake_path("candidates"))
    frame, emb = aligned_catalog()
    q_rows, c_rows, queries = _grid(cands, frame)
    scorer = _load_scorer("gutted_reranker")
    scores = score_candidates(scorer, emb, q_rows, c_rows,
                              progress=lambda d, n: context.log.info(f"gutted reranker: {d}/{n} queries"))
    table = _ranked_table(cands, queries, scores)
    write_parquet(table, lake_path("reranked_candidates"))
    return dg.MaterializeResult(metadata={"queries": len(queries), "candidates": table.height,
                                         "reranker_version": pointers("gutted_reranker")["current"],
                                         "dagster/row_count": table.height})


def _grid(cands: pl.DataFrame, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(query rows (Q,), candidate rows (Q, K), query ids) from the long candidates table."""
    pos = {k: i for i, k in enumerate(frame["image_id"].to_list())}
    queries = cands["query"].unique(maintain_order=True).to_list()
    by_q = cands.sort("query", "rank").group_by("query", maintain_order=True).agg(pl.col("image_id"))
    lists = dict(zip(by_q["query"], by_q["image_id"], strict=True))
    k = min(len(v) for v in lists.values())
    return (np.array([pos[q] for q in queries]),
            np.array([[pos[i] for i in lists[q][:k]] for q in queries]), queries)


def _ranked_table(cands: pl.DataFrame, queries: list[str], scores: np.ndarray) -> pl.DataFrame:
    by_q = cands.sort("query", "rank").group_by("query", maintain_order=True).agg(pl.col("image_id"))
    lists = dict(zip(by_q["query"], by_q["image_id"], strict=True))
    rows = []
    for q, s in zip(queries, scores, strict=True):
        items = lists[q][: len(s)]
        order = np.argsort(-s, kind="stable")
        rank = np.empty(len(s), int)
        rank[order] = np.arange(1, len(s) + 1)
        rows += [{"query": q, "image_id": items[j], "retrieval_rank": j + 1, "score": float(s[j]), "rank": int(rank[j])}
                 for j in range(len(s))]
    return pl.DataFrame(rows)


@dg.asset(group_name="evaluation", kinds={"duckdb", "html"},
          deps=[reranked_candidates, full_vlm_reranker, image_encoder], code_version="evaluation_report-v1")
def evaluation_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Quality and cost side by side: random, popularity, retrieval, gutted and full-VLM rerankers.

    NDCG@10 (bootstrap 95% CI), Recall@10/50 and MRR against held-out relevance, a per-label
    breakdown, measured cost per candidate and the analytic production estimate; the
    challenger is compared with the current champion on the same queries. Written to
    `reports/<run_id>/` (report.json, report.html with plots); `reports/latest` points to it.
    """
    inputs = evaluation_inputs(log=context.log.info)
    rankings, costs, extra = system_rankings(inputs, log=context.log.info)
    relevant = inputs["relevant"]
    per_query = {name: list_metrics(ranked, relevant) for name, ranked in rankings.items()}
    systems = {name: {**summarise(m), **costs.get(name, dict.fromkeys(
        ("flops_per_candidate", "ms_per_1k_candidates", "tokens_per_candidate")))} for name, m in per_query.items()}
    champion = _champion_comparison(per_query["gutted"]["ndcg_at_10"], extra.get("champion_ndcg"))
    vs_retrieval = paired_difference_ci(per_query["gutted"]["ndcg_at_10"], per_query["retrieval"]["ndcg_at_10"])
    report = {
        "run_id": context.run_id, "created_at": datetime.now(timezone.utc).isoformat(),
        **inputs["header"], "systems": systems,
        "cost_ratio": {"flops": systems["full_vlm"]["flops_per_candidate"] / systems["gutted"]["flops_per_candidate"],
                       "ms": systems["full_vlm"]["ms_per_1k_candidates"] / systems["gutted"]["ms_per_1k_candidates"]},
        "production_estimate": production_estimate(),
        "challenger": {"version": pointers("gutted_reranker")["current"], **champion,
                       "retrieval_ndcg_diff": vs_retrieval[0], "retrieval_ndcg_diff_ci": list(vs_retrieval[1:])},
    }
    by_label = _per_label(per_query, inputs["query_labels"])
    folder = write_report(report, {"Per-label NDCG@10": by_label,
                                   "Production estimate (analytic, 448 px)": [
                                       {"model": k, **{kk: f"{vv:.3g}" for kk, vv in v.items()}}
                                       for k, v in report["production_estimate"].items()]})
    context.log.info(f"report written to {folder}/report.html")
    return dg.MaterializeResult(metadata={
        **{f"{name}_ndcg_at_10": s["ndcg_at_10"] for name, s in systems.items()},
        "cost_ratio_flops": report["cost_ratio"]["flops"], "cost_ratio_ms": report["cost_ratio"]["ms"],
        "queries": report["dataset"]["queries"],
        "retrieval_ndcg_diff": vs_retrieval[0], "retrieval_ndcg_diff_ci_high": vs_retrieval[2],
        **({"champion_ndcg_diff": champion["ndcg_diff"], "champion_ndcg_diff_ci_high": champion["ndcg_diff_ci"][1]}
           if champion["ndcg_diff_ci"] else {}),
        "report": dg.MetadataValue.path(str(folder / "report.html")),
        "systems": dg.MetadataValue.md(md_table(summary_rows(report))),
        "per_label": dg.MetadataValue.md(md_table(by_label)),
        "quality_vs_cost": dg.MetadataValue.md(md_image(quality_cost_plot(report))),
    })


def _champion_comparison(challenger: np.ndarray, champion: np.ndarray | None) -> dict:
    """Paired comparison with the champion on the same queries (None: no champion yet)."""
    if champion is None:
        return {"champion": pointers("reranker_champion")["current"], "ndcg_diff": None, "ndcg_diff_ci": None}
    mean, lo, hi = paired_difference_ci(challenger, champion)
    return {"champion": pointers("reranker_champion")["current"], "ndcg_diff": mean, "ndcg_diff_ci": [lo, hi]}


def _per_label(per_query: dict, labels: list[str | None]) -> list[dict]:
    rows = []
    labs = np.array([lab or "(none)" for lab in labels])
    for lab in sorted(set(labs)):
        mask = labs == lab
        rows.append({"label": lab, "queries": int(mask.sum()),
                     **{name: round(float(m["ndcg_at_10"][mask].mean()), 3) for name, m in per_query.items()}})
    return rows


@dg.asset_check(asset=evaluation_report, blocking=True,
                description="The challenger's NDCG@10 is not worse than the champion's, nor than retrieval's, "
                            "beyond the paired 95% CI.")
def challenger_not_worse(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Blocks promotion when the challenger is significantly worse than the current champion or than retrieval."""
    report = latest_report()
    passed, why = promotion_decision(report)
    ch = report["challenger"]
    return dg.AssetCheckResult(passed=passed, description=why, metadata={
        "ndcg_diff": ch["ndcg_diff"], "ndcg_diff_ci": str(ch["ndcg_diff_ci"]),
        "retrieval_ndcg_diff": ch.get("retrieval_ndcg_diff"), "retrieval_ndcg_diff_ci": str(ch.get("retrieval_ndcg_diff_ci")),
        "champion": str(ch["champion"]), "challenger": ch["version"]})


@dg.asset(group_name="evaluation", kinds={"safetensors"}, deps=[evaluation_report], code_version="reranker_champion-v1")
def reranker_champion(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The gutted reranker version that serves: the challenger, once it passed `challenger_not_worse`.

    The asset applies the same rule itself (`promotion_decision`), so a run that selects it
    without the check (automation, the UI) cannot promote a challenger the check would stop.
    History is kept in `models/reranker_champion/pointers.json`; `lensless promote` and
    `lensless rollback` move it by hand.
    """
    report = latest_report()
    challenger, current = report["challenger"]["version"], pointers("reranker_champion")["current"]
    passed, why = promotion_decision(report)
    if passed and report["challenger"].get("champion") != current:  # moved by hand since the report
        passed, why = False, (f"the report compared the challenger with champion {report['challenger'].get('champion')}, "
                              f"but the champion is now {current}; rematerialise evaluation_report")
    promoted = passed and challenger != current
    if promoted:
        set_current("reranker_champion", challenger, reason=f"promoted by run {context.run_id}",
                    versions_of="gutted_reranker")
    else:
        context.log.info(f"champion stays {current}: " + (why if not passed else "the challenger already serves"))
    state = pointers("reranker_champion")
    return dg.MaterializeResult(data_version=dg.DataVersion(str(state["current"])), metadata={
        "champion": str(state["current"]), "promoted": promoted, "previous": current or "(none)",
        "decision": why, "history_length": len(state["history"]),
    })
