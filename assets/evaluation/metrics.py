"""Metrics of ranked lists against relevant sets, per query. No Dagster here.

Unlike the group metrics in models/ranking_metrics.py (which only see the candidates they
are given), these judge a system's top of list against EVERY relevant image of the query,
so systems that rank different candidate sets are comparable:
- NDCG@k: the relevant images' gains (1 each for a set; graded when relevance is a
  {image: gain} dict, e.g. a save 2 and a click 1), log2 discount, ideal DCG from the k
  largest gains;
- Recall@k: |relevant ∩ top-k| / |relevant|;
- MRR: 1 / rank of the first relevant image (0 when none is listed).
"""

from __future__ import annotations

import numpy as np

from models.ranking_metrics import bootstrap_ci


def list_metrics(ranked: list[list[str]], relevant: list[set[str] | dict[str, float]]) -> dict[str, np.ndarray]:
    """Per-query ndcg_at_10, recall_at_10, recall_at_50 and mrr arrays."""
    assert len(ranked) == len(relevant), f"{len(ranked)} ranked lists but {len(relevant)} relevant sets"
    discount = 1.0 / np.log2(np.arange(2, 12))
    out = {"ndcg_at_10": [], "recall_at_10": [], "recall_at_50": [], "mrr": []}
    for items, rel in zip(ranked, relevant, strict=True):
        gain = rel if isinstance(rel, dict) else dict.fromkeys(rel, 1.0)
        hits = np.array([i in gain for i in items], dtype=float)
        gains = np.array([gain.get(i, 0.0) for i in items[:10]], dtype=float)
        n_rel = max(1, len(rel))
        best = np.sort(np.fromiter(gain.values(), dtype=float, count=len(gain)))[::-1][:10]
        ideal = float(best @ discount[: len(best)])
        out["ndcg_at_10"].append(float(gains @ discount[: len(gains)] / ideal) if ideal > 0 else 0.0)
        out["recall_at_10"].append(hits[:10].sum() / n_rel)
        out["recall_at_50"].append(hits[:50].sum() / n_rel)
        first = np.flatnonzero(hits)
        out["mrr"].append(1.0 / (first[0] + 1) if len(first) else 0.0)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def summarise(per_query: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Means, plus a bootstrap 95% interval for NDCG@10."""
    ci = bootstrap_ci(per_query["ndcg_at_10"], seed=seed)
    return {"ndcg_at_10": ci["mean"], "ndcg_at_10_ci": [ci["lo"], ci["hi"]],
            **{k: float(v.mean()) for k, v in per_query.items() if k != "ndcg_at_10"}}


def paired_difference_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a − b over the same queries, with a seeded paired-bootstrap 95% interval."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    ci = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return ci["mean"], ci["lo"], ci["hi"]
