"""Evaluation assets: `candidates`, `reranked_candidates`, `evaluation_report`, `reranker_champion`."""

from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl

from assets.embeddings.assets import image_encoder
from assets.evaluation.metrics import list_metrics, paired_difference_ci, summarise
from assets.evaluation.promotion import CHALLENGER, CHAMPION, promotion_decision
from assets.evaluation.provenance import provenance
from assets.evaluation.report import (
    decision_rows,
    latest_report,
    production_rows,
    provenance_rows,
    quality_cost_plot,
    summary_rows,
    write_report,
)
from assets.evaluation.systems import (
    candidate_grid,
    candidate_lists,
    evaluation_inputs,
    production_estimate,
    system_rankings,
)
from assets.evaluation.users import BARS, user_task
from assets.plots import md_image
from assets.reranker.aligned import aligned_catalog, engagement_prior, rows_of
from assets.reranker.assets import (
    full_vlm_reranker,
    gutted_reranker,
    sequential_reranker,
    training_pairs,
    user_histories,
)
from assets.retrieval.assets import faiss_index
from assets.retrieval.candidates import Queries, catalog_candidates, chosen_share, source_recall
from assets.settings import settings_metadata
from assets.store.lake import CANDIDATE_SCHEMA, read_table, write_table
from assets.store.models import current_dir, pointers, set_current
from assets.store.resource import LenslessHome
from models.progress import throttled
from models.rerankers import load_reranker
from models.scoring import CANDIDATES, score_candidates


class CandidatesRunConfig(dg.Config):
    """How many candidates per query, and how many held-out queries to evaluate."""

    k: int = CANDIDATES
    max_queries: int = 400
    seed: int = 0


@dg.asset(group_name="evaluation", kinds={"faiss", "parquet"}, deps=[training_pairs, faiss_index],
          code_version="candidates-v2")
def candidates(context: dg.AssetExecutionContext, config: CandidatesRunConfig,
               lensless_home: LenslessHome) -> dg.MaterializeResult:
    """K candidates for every held-out evaluation query (itself excluded), from two sources:
    `faiss_index` neighbours and the train split's most engaged images, at the popular share
    `training_pairs` chose on validation recall (`candidate_mix`).

    Writes the `candidates` table (query, rank, image_id, score = cosine similarity, source),
    ranked by cosine: the `retrieval` system's order.
    """
    home = lensless_home.get()
    queries = read_table(home, "evaluation_queries")
    if queries.height == 0:
        raise ValueError("no evaluation queries: training_pairs found no held-out relevance")
    if queries.height > config.max_queries:
        queries = queries.sample(config.max_queries, seed=config.seed).sort("query")
    frame, emb = aligned_catalog(home)
    ids = frame["image_id"].to_numpy()
    pos = rows_of(frame)
    found = catalog_candidates(home, frame, emb, Queries.images(emb, [pos[q] for q in queries["query"]]), config.k)
    records = [{"query": q, "rank": r + 1, "image_id": ids[i], "score": float(s), "source": src}
               for q, rows, scores, sources in zip(queries["query"], found.rows, found.scores, found.source, strict=True)
               for r, (i, s, src) in enumerate(zip(rows, scores, sources, strict=True))]
    table = pl.DataFrame(records, schema=CANDIDATE_SCHEMA)
    write_table(home, "candidates", table)
    return dg.MaterializeResult(metadata={
        "queries": queries.height, "k": config.k, **settings_metadata(config), "popular_share": chosen_share(home),
        "popular_candidates": int((found.source == "popular").sum()), "dagster/row_count": table.height})


@dg.asset(group_name="evaluation", kinds={"pytorch", "parquet"}, deps=[candidates, gutted_reranker],
          code_version="reranked_candidates-v1")
def reranked_candidates(context: dg.AssetExecutionContext, lensless_home: LenslessHome) -> dg.MaterializeResult:
    """The candidates re-scored by the challenger gutted reranker (the product's output).

    Writes the `reranked_candidates` table (query, image_id, retrieval_rank, score, rank).
    """
    home = lensless_home.get()
    cands = read_table(home, "candidates")
    frame, emb = aligned_catalog(home)
    queries, q_rows, c_rows = candidate_grid(cands, frame)
    scorer = load_reranker(current_dir(home, CHALLENGER))
    scores = score_candidates(scorer, emb, q_rows, c_rows, prior=engagement_prior(home, frame),
                              progress=throttled(context.log.info, "gutted reranker, queries scored"))
    table = _ranked_table(candidate_lists(cands), queries, scores)
    write_table(home, "reranked_candidates", table)
    return dg.MaterializeResult(metadata={"queries": len(queries), "candidates": table.height,
                                         "reranker_version": pointers(home, CHALLENGER)["current"],
                                         "dagster/row_count": table.height})


def _ranked_table(lists: dict[str, list[str]], queries: list[str], scores: np.ndarray) -> pl.DataFrame:
    """The long reranked table: every candidate with its retrieval rank, score and new rank."""
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
          deps=[reranked_candidates, full_vlm_reranker, sequential_reranker, user_histories, image_encoder],
          code_version="evaluation_report-v3")
def evaluation_report(context: dg.AssetExecutionContext, lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Quality and cost side by side, for both tasks: related images (random, popularity,
    retrieval, the sequential peer, the gutted and full-VLM rerankers) and for a user
    (`user_task`: the same systems, with the user's history as the query).

    NDCG@10 (bootstrap 95% CI), Recall@10/50 and MRR against held-out relevance, a per-label
    breakdown, measured cost per candidate and the analytic production estimate; the
    challenger is compared with the current champion on the same queries. Written to
    `reports/<run_id>/` (report.json, report.html with plots); `reports/latest.json` names it.
    """
    home = lensless_home.get()
    inputs = evaluation_inputs(home, log=context.log.info)
    rankings, costs, extra = system_rankings(home, inputs, log=context.log.info)
    relevant = inputs["relevant"]
    per_query = {name: list_metrics(ranked, relevant) for name, ranked in rankings.items()}
    systems = {name: {**summarise(m), **costs.get(name, dict.fromkeys(
        ("flops_per_candidate", "ms_per_1k_candidates", "tokens_per_candidate")))} for name, m in per_query.items()}
    champion = _champion_comparison(pointers(home, CHAMPION)["current"], per_query["gutted"]["ndcg_at_10"],
                                    extra.get("champion_ndcg"))
    comparisons = {f"gutted_vs_{bar}": _paired(per_query, "gutted", bar) for bar in BARS}
    if champion["ndcg_diff_ci"] is not None:
        comparisons["challenger_vs_champion"] = {"diff": champion["ndcg_diff"], "ci": champion["ndcg_diff_ci"]}
    vs_retrieval = comparisons["gutted_vs_retrieval"]
    rows = rows_of(inputs["frame"])
    report = {
        "run_id": context.run_id, "created_at": datetime.now(timezone.utc).isoformat(),
        **inputs["header"], "systems": systems,
        "cost_ratio": {"flops": systems["full_vlm"]["flops_per_candidate"] / systems["gutted"]["flops_per_candidate"],
                       "ms": systems["full_vlm"]["ms_per_1k_candidates"] / systems["gutted"]["ms_per_1k_candidates"]},
        "production_estimate": production_estimate(extra["gutted_config"]),
        "challenger": {"version": pointers(home, CHALLENGER)["current"], **champion,
                       "retrieval_ndcg_diff": vs_retrieval["diff"], "retrieval_ndcg_diff_ci": vs_retrieval["ci"]},
        "comparisons": comparisons,
        "candidate_sources": source_recall(
            home, inputs["frame"], inputs["emb"], Queries.images(inputs["emb"], inputs["query_rows"]),
            inputs["cand_rows"], [{rows[i] for i in r if i in rows} for r in inputs["relevant"]]),
    }
    users = user_task(home, inputs, log=context.log.info)
    if users is not None:
        report["user_task"] = users[0]
    report["provenance"] = provenance(context.instance, context.run_id)
    by_label = _per_label(per_query, inputs["query_labels"])
    sources = [{"source": n, "recall_at_k": round(r, 4)} for n, r in report["candidate_sources"]["recall_at_k"].items()]
    folder = write_report(home, report, {"Per-label NDCG@10": by_label,
                                   f"Candidate sources (popular share {report['candidate_sources']['popular_share']:g})":
                                       sources,
                                   "Production estimate (analytic, 448 px)": production_rows(report)})
    context.log.info(f"report written to {folder}/report.html")
    return dg.MaterializeResult(metadata={
        **{f"{name}_ndcg_at_10": _round(s["ndcg_at_10"]) for name, s in systems.items()},
        "cost_ratio_flops": _round(report["cost_ratio"]["flops"]), "cost_ratio_ms": _round(report["cost_ratio"]["ms"]),
        "queries": report["dataset"]["queries"],
        "retrieval_ndcg_diff": _round(vs_retrieval["diff"]), "retrieval_ndcg_diff_ci_low": _round(vs_retrieval["ci"][0]),
        "retrieval_ndcg_diff_ci_high": _round(vs_retrieval["ci"][1]),
        **({"champion_ndcg_diff": _round(champion["ndcg_diff"]),
            "champion_ndcg_diff_ci_low": _round(champion["ndcg_diff_ci"][0]),
            "champion_ndcg_diff_ci_high": _round(champion["ndcg_diff_ci"][1])} if champion["ndcg_diff_ci"] else {}),
        "report": dg.MetadataValue.path(str(folder / "report.html")),
        **{f"plot_{png.stem}": dg.MetadataValue.path(str(png)) for png in sorted(folder.glob("*.png"))},
        "decision": _table(decision_rows(report)),
        "systems": _table(summary_rows(report)),
        "provenance": _table(provenance_rows(report)),
        "commit": report["provenance"]["commit"] or "unknown",
        "per_label": _table(by_label),
        "candidate_sources": _table(sources),
        "quality_vs_cost": dg.MetadataValue.md(md_image(quality_cost_plot(report))),
        **_user_metadata(report.get("user_task")),
    })


def _user_metadata(users: dict | None) -> dict:
    """The user task's headline numbers and tables for the UI (none without a user task)."""
    if users is None:
        return {"user_task": "none: no engagement log"}
    vs = users["comparisons"]["gutted_vs_retrieval"]
    return {
        **{f"user_{name}_ndcg_at_10": _round(s["ndcg_at_10"]) for name, s in users["systems"].items()},
        "user_retrieval_ndcg_diff": _round(vs["diff"]), "user_retrieval_ndcg_diff_ci_low": _round(vs["ci"][0]),
        "user_retrieval_ndcg_diff_ci_high": _round(vs["ci"][1]), "user_test_users": users["users"],
        "user_decision": _table(decision_rows(users)), "user_systems": _table(summary_rows(users)),
        "user_quality_vs_cost": dg.MetadataValue.md(md_image(quality_cost_plot(users, "for a user: quality against cost"))),
    }


def _round(x: float) -> float:
    """Four significant digits: what a person reads in the UI's metadata."""
    return float(f"{x:.4g}")


def _table(rows: list[dict]) -> dg.MetadataValue:
    """Rows as a Dagster table (a real table in the UI, not a markdown blob)."""
    if not rows:
        return dg.MetadataValue.md("_(none)_")
    kinds = {int: "int", float: "float", bool: "bool"}
    columns = {name: {type(r[name]) for r in rows} for name in rows[0]}
    kind = {name: kinds[ts.pop()] if len(ts) == 1 and next(iter(ts)) in kinds else "string" for name, ts in columns.items()}

    def cell(name: str, v):
        if kind[name] == "string":
            return str(v)
        return round(v, 4) if isinstance(v, float) else v

    schema = dg.TableSchema(columns=[dg.TableColumn(name, k) for name, k in kind.items()])
    records = [dg.TableRecord({name: cell(name, v) for name, v in r.items()}) for r in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


def _paired(per_query: dict, a: str, b: str) -> dict:
    """Paired NDCG@10 difference a − b on the same queries, with its bootstrap 95% interval."""
    mean, lo, hi = paired_difference_ci(per_query[a]["ndcg_at_10"], per_query[b]["ndcg_at_10"])
    return {"diff": mean, "ci": [lo, hi]}


def _champion_comparison(version: str | None, challenger: np.ndarray, champion: np.ndarray | None) -> dict:
    """Paired comparison with champion `version` on the same queries (no scores: no champion
    yet, or the champion is the challenger)."""
    if champion is None:
        return {"champion": version, "ndcg_diff": None, "ndcg_diff_ci": None}
    mean, lo, hi = paired_difference_ci(challenger, champion)
    return {"champion": version, "ndcg_diff": mean, "ndcg_diff_ci": [lo, hi]}


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
def challenger_not_worse(context: dg.AssetCheckExecutionContext, lensless_home: LenslessHome) -> dg.AssetCheckResult:
    """Blocks promotion when the challenger is significantly worse than the current champion or than retrieval."""
    report = latest_report(lensless_home.get())
    passed, why = promotion_decision(report)
    ch = report["challenger"]
    return dg.AssetCheckResult(passed=passed, description=why, metadata={
        "ndcg_diff": ch["ndcg_diff"], "ndcg_diff_ci": str(ch["ndcg_diff_ci"]),
        "retrieval_ndcg_diff": ch["retrieval_ndcg_diff"], "retrieval_ndcg_diff_ci": str(ch["retrieval_ndcg_diff_ci"]),
        "champion": str(ch["champion"]), "challenger": ch["version"]})


@dg.asset(group_name="evaluation", kinds={"safetensors"}, deps=[evaluation_report], code_version="reranker_champion-v1")
def reranker_champion(context: dg.AssetExecutionContext, lensless_home: LenslessHome) -> dg.MaterializeResult:
    """The gutted reranker version that serves: the challenger, once it passed `challenger_not_worse`.

    The asset applies the same rule itself (`promotion_decision`), so a run that selects it
    without the check (automation, the UI) cannot promote a challenger the check would stop.
    History is kept in the log `models/reranker_champion/pointers/`; `lensless promote` and
    `lensless rollback` move it by hand.
    """
    home = lensless_home.get()
    report = latest_report(home)
    challenger, current = report["challenger"]["version"], pointers(home, CHAMPION)["current"]
    passed, why = promotion_decision(report)
    if passed and report["challenger"]["champion"] != current:  # moved by hand since the report
        passed, why = False, (f"the report compared the challenger with champion {report['challenger']['champion']}, "
                              f"but the champion is now {current}; rematerialise evaluation_report")
    promoted = passed and challenger != current
    if promoted:
        set_current(home, CHAMPION, challenger, reason=f"promoted by run {context.run_id}", versions_of=CHALLENGER,
                    expect=current)
    else:
        context.log.info(f"champion stays {current}: " + (why if not passed else "the challenger already serves"))
    state = pointers(home, CHAMPION)
    return dg.MaterializeResult(data_version=dg.DataVersion(str(state["current"])), metadata={
        "champion": str(state["current"]), "promoted": promoted, "previous": current or "(none)",
        "decision": why, "history_length": len(state["history"]),
    })
