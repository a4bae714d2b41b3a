"""Inputs and rankings of every evaluated system, for the evaluation report. No Dagster here.

Systems, all judged on the same held-out queries and relevant sets:
- `random`: K catalog images drawn at random (seeded);
- `popularity`: the K most engaged images of the train split;
- `retrieval`: the candidates (index neighbours merged with popular images,
  `retrieval.candidates`) by cosine similarity;
- `sequential`: the same candidates re-ranked by the peer without a language model;
- `gutted`: the same candidates re-ranked by the challenger gutted reranker;
- `full_vlm`: the same candidates re-ranked by the full-VLM baseline (pixels).
Costs are measured here, side by side in one process, on the first queries' K candidates.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.evaluation.metrics import list_metrics
from assets.ingestion.coengagement import popularity
from assets.ingestion.sources import watched_sources
from assets.reranker.aligned import aligned_catalog, aligned_pixels, engagement_prior, rows_of
from assets.retrieval.index_store import load_state
from assets.store.files import Home
from assets.store.lake import read_table
from assets.store.models import current_dir, pointers, version_dir
from models.checkpoint import load_checkpoint
from models.cost import PRODUCTION, analytic_flops, measure_costs
from models.progress import throttled
from models.rerankers import load_reranker
from models.scoring import score_candidates


def candidate_lists(cands: pl.DataFrame) -> dict[str, list[str]]:
    """{query: candidate image ids in retrieval rank order} from the long `candidates` table."""
    by_q = cands.sort("query", "rank").group_by("query", maintain_order=True).agg(pl.col("image_id"))
    return dict(zip(by_q["query"], by_q["image_id"].to_list(), strict=True))


def candidate_grid(cands: pl.DataFrame, frame: pl.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(query ids, query rows (Q,), candidate rows (Q, K)) into the aligned catalog `frame`,
    K being the shortest list."""
    pos, lists = rows_of(frame), candidate_lists(cands)
    queries = list(lists)
    k = min(len(v) for v in lists.values())
    return queries, np.array([pos[q] for q in queries]), np.array([[pos[i] for i in lists[q][:k]] for q in queries])


def evaluation_inputs(home: Home, log=print) -> dict:
    """Queries, candidate rows, relevant sets, labels and the report header."""
    frame, emb = aligned_catalog(home)
    ids = frame["image_id"].to_list()
    queries, query_rows, cand_rows = candidate_grid(read_table(home, "candidates"), frame)
    k = cand_rows.shape[1]
    rel_table = read_table(home, "evaluation_queries")
    rel = dict(zip(rel_table["query"], rel_table["relevant"], strict=True))
    source = rel_table["source"][0] if rel_table.height else "none"
    labels = frame["label"].to_list()
    _, _, enc_extra = load_checkpoint(current_dir(home, "image_encoder"))
    enc = enc_extra.get("metrics", {})
    state = load_state(home)
    n_labels = len({lab for lab in labels if lab is not None})
    header = {
        "dataset": {"source": ", ".join(map(home.relative, watched_sources(home))) or "unknown", "images": len(ids),
                    "quarantined": read_table(home, "quarantine").height, "labels": n_labels or None,
                    "queries": len(queries), "relevance": source, "candidates_per_query": int(k)},
        "encoder": {"dim": int(emb.shape[1]), "knn_precision_at_10": enc.get("ours_knn_precision_at_10"),
                    "pixel_baseline_knn_precision_at_10": enc.get("pixel_knn_precision_at_10"),
                    "random_init_knn_precision_at_10": enc.get("random_init_knn_precision_at_10"),
                    "version": pointers(home, "image_encoder")["current"]},
        "index": {k2: state[k2] for k2 in ("factory", "params", "recall_at_10", "qps", "exact_qps", "n")},
    }
    log(f"evaluating {len(queries)} queries x {k} candidates ({source} relevance)")
    return {"frame": frame, "emb": emb, "prior": engagement_prior(home, frame), "ids": ids, "queries": queries,
            "query_rows": query_rows,
            "cand_rows": cand_rows, "relevant": [set(rel[q]) for q in queries],
            "query_labels": [labels[i] for i in query_rows], "header": header}


def ranked_ids(ids: list[str], rows: np.ndarray, scores: np.ndarray) -> list[list[str]]:
    """Each query's candidate ids (rows into `ids`) in descending score order (stable)."""
    return [[ids[r[j]] for j in np.argsort(-s, kind="stable")] for r, s in zip(rows, scores, strict=True)]


def system_rankings(home: Home, inputs: dict, seed: int = 0, cost_queries: int = 4,
                    log=print) -> tuple[dict, dict, dict]:
    """(rankings {system: [ranked ids per query]}, costs {system: cost fields}, extra:
    the champion's per-query NDCG@10 when it differs from the challenger, and the
    challenger's model config)."""
    ids, q_rows, c_rows = inputs["ids"], inputs["query_rows"], inputs["cand_rows"]
    k = c_rows.shape[1]
    rng = np.random.default_rng(seed)
    rankings = {"retrieval": [[ids[j] for j in r] for r in c_rows]}
    rankings["random"] = [[ids[j] for j in rng.choice(np.delete(np.arange(len(ids)), q), k, replace=False)] for q in q_rows]
    popular = popularity(home)["image_id"].to_list()
    engaged = set(popular)
    popular += [i for i in ids if i not in engaged]  # unengaged images last, in catalog order
    rankings["popularity"] = [[i for i in popular[: k + 1] if i != ids[q]][:k] for q in q_rows]

    by_q = candidate_lists(read_table(home, "reranked_candidates"))  # in the reranker's rank order
    rankings["gutted"] = [by_q[q] for q in inputs["queries"]]

    log("scoring candidates with the full-VLM baseline (vision tower on pixels)")
    pixels = aligned_pixels(home, inputs["frame"])
    full = load_reranker(current_dir(home, "full_vlm_reranker"))
    full_scores = score_candidates(full, pixels, q_rows, c_rows, prior=inputs["prior"],
                                   progress=throttled(log, "full VLM, queries scored"))
    rankings["full_vlm"] = ranked_ids(ids, c_rows, full_scores)

    peer = load_reranker(current_dir(home, "sequential_reranker"))
    rankings["sequential"] = ranked_ids(ids, c_rows, score_candidates(peer, inputs["emb"], q_rows, c_rows,
                                                                      prior=inputs["prior"]))

    gutted = load_reranker(current_dir(home, "gutted_reranker"))
    costs = measure_costs({"gutted": (gutted, inputs["emb"]), "full_vlm": (full, pixels),
                           "sequential": (peer, inputs["emb"])},
                          q_rows[:cost_queries], c_rows[:cost_queries], prior=inputs["prior"])
    state = load_state(home)
    d = inputs["emb"].shape[1]
    costs["retrieval"] = {"flops_per_candidate": 2.0 * d, "ms_per_1k_candidates": 1e6 / (state["qps"] * k),
                          "tokens_per_candidate": 0}
    for name in costs:
        costs[name]["tokens_per_candidate"] = int(round(costs[name]["tokens_per_candidate"]))

    extra = {"gutted_config": gutted.cfg}
    champ, chall = pointers(home, "reranker_champion")["current"], pointers(home, "gutted_reranker")["current"]
    if champ is not None and champ != chall:
        log(f"scoring the same candidates with champion {champ}")
        champion = load_reranker(version_dir(home, "gutted_reranker", champ))
        ranked = ranked_ids(ids, c_rows, score_candidates(champion, inputs["emb"], q_rows, c_rows,
                                                             prior=inputs["prior"]))
        extra["champion_ndcg"] = list_metrics(ranked, inputs["relevant"])["ndcg_at_10"]
    return rankings, costs, extra


def production_estimate(gutted_config) -> dict:
    """Analytic FLOPs per candidate for Qwen3-VL 2B/4B/8B at 448 px: full VLM vs the gutted
    model as trained (its k, embedding width and projector)."""
    out = {}
    for name in PRODUCTION:
        row = analytic_flops(name, gutted=gutted_config)
        out[name] = {"full_flops_per_candidate": row["full_gflops"] * 1e9,
                     "gutted_flops_per_candidate": row["gutted_gflops"] * 1e9, "ratio": row["ratio"]}
    return out
