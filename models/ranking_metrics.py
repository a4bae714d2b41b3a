"""Ranking metrics over groups of scored candidates, in numpy.

Every function takes `scores` (G, C), higher is better, and `relevance` (G, C) gains (binary
or graded), and returns one value per group, so callers can average, bootstrap or slice.
Ties are broken pessimistically: among equal scores, less relevant candidates rank first,
so a constant scorer earns no credit from the input order. DCG uses linear gains with a
log2(rank + 1) discount (rank from 1). `bootstrap_ci` gives a seeded percentile interval
for the mean of per-group values.
"""

from __future__ import annotations

import numpy as np


def _check(scores: np.ndarray, relevance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    relevance = np.asarray(relevance, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != relevance.shape:
        raise ValueError(
            f"scores and relevance must both be (G, C); got {scores.shape} and {relevance.shape}"
        )
    return scores, relevance


def rank_order(scores: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Column indices (G, C) in ranked order: score descending, ties less relevant first."""
    scores, relevance = _check(scores, relevance)
    return np.stack([np.lexsort((r, -s)) for s, r in zip(scores, relevance, strict=True)])


def positive_first_relevance(n_groups: int, n_cands: int) -> np.ndarray:
    """Relevance (G, C) for groups whose positive sits in column 0 and the rest are negatives."""
    rel = np.zeros((n_groups, n_cands))
    rel[:, 0] = 1.0
    return rel


def ndcg_at_k(scores, relevance, k: int = 10) -> np.ndarray:
    """NDCG@k per group (G,); groups with no relevant candidate get 0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores, relevance = _check(scores, relevance)
    order = rank_order(scores, relevance)
    kk = min(k, scores.shape[1])
    discount = 1.0 / np.log2(np.arange(2, kk + 2))  # (kk,)
    gains = np.take_along_axis(relevance, order, axis=1)[:, :kk]
    ideal = -np.sort(-relevance, axis=1)[:, :kk]
    dcg, idcg = gains @ discount, ideal @ discount
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)


def recall_at_k(scores, relevance, k: int = 10) -> np.ndarray:
    """Fraction of each group's relevant candidates (relevance > 0) ranked in the top k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores, relevance = _check(scores, relevance)
    order = rank_order(scores, relevance)
    hit = np.take_along_axis(relevance > 0, order, axis=1)
    total = hit.sum(1)
    return np.where(total > 0, hit[:, :k].sum(1) / np.maximum(total, 1), 0.0)


def mrr(scores, relevance) -> np.ndarray:
    """Reciprocal rank of the first relevant candidate per group (0 when there is none)."""
    scores, relevance = _check(scores, relevance)
    order = rank_order(scores, relevance)
    hit = np.take_along_axis(relevance > 0, order, axis=1)
    first = hit.argmax(1)
    return np.where(hit.any(1), 1.0 / (first + 1), 0.0)


def bootstrap_ci(values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean of `values` with a seeded percentile bootstrap (1 - alpha) interval."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[idx].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(values.mean()), "lo": float(lo), "hi": float(hi), "n": int(values.size)}
