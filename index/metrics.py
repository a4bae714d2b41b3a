"""Exact kNN, tie-aware recall, and a seeded synthetic dataset for checking approximate search.

All vectors are L2-normalised float32, so the metric is inner product: larger is closer and
result tables are sorted best first (faiss convention for METRIC_INNER_PRODUCT).

Ties: two database vectors can score exactly the same for a query (duplicates, symmetric
points). The exact top-k then picks among them arbitrarily, and a correct approximate index
may pick the other one. When the exact distances are passed (``gt_D`` and the result's own
``D``), a returned id counts as a hit if it is in the exact top-k OR its exact score is at
least the exact k-th score minus ``tol`` (for ``one_recall_at_k``: the exact 1st score), so
an id tied with the k-th neighbour is accepted; ``tol`` also absorbs the float rounding
between two kernels computing the same inner product. ``D`` must
then hold exact scores: IVF-Flat, HNSW-Flat and Flat return exact ones; PQ results must be
rescored first (``rescore``).
"""

# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

from __future__ import annotations

import faiss
import numpy as np


def exact_knn(
    xb: np.ndarray, xq: np.ndarray, k: int, knn=faiss.knn
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product kNN of xq in xb -> (D, I), I in row numbers of xb.

    ``knn`` is injectable (e.g. ``faiss.knn_gpu`` bound to a resource)."""
    xb, xq = _as_f32(xb), _as_f32(xq)
    assert xb.shape[1] == xq.shape[1], f"dimension mismatch: xb d={xb.shape[1]}, xq d={xq.shape[1]}"
    assert 0 < k <= len(xb), f"k={k} must be in [1, n={len(xb)}]"
    return knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)


def rescore(xq: np.ndarray, xb: np.ndarray, I: np.ndarray) -> np.ndarray:
    """Exact inner products of xq[i] with xb[I[i, j]]; -1 entries get -inf. I holds row numbers."""
    assert I.shape[0] == len(xq), f"I has {I.shape[0]} rows for {len(xq)} queries"
    safe = np.where(I < 0, 0, I)
    D = np.einsum("qd,qkd->qk", _as_f32(xq), _as_f32(xb)[safe])  # (nq, k)
    return np.where(I < 0, -np.inf, D).astype("float32")


def recall_at_k(
    I: np.ndarray,
    gt_I: np.ndarray,
    k: int,
    D: np.ndarray | None = None,
    gt_D: np.ndarray | None = None,
    tol: float = 1e-5,
) -> float:
    """Intersection measure |top-k result ∩ exact top-k| / |exact top-k|, in [0, 1]: nq * k
    in the denominator, less the exact table's missing (-1) entries when the database holds
    fewer than k vectors.

    Modes: ids only (``D``/``gt_D`` None): plain intersection, the same number as
    ``faiss.contrib.evaluation.knn_intersection_measure``. With ``D`` and ``gt_D``: a result
    whose exact score ties (or beats, within ``tol``) the exact k-th score also counts."""
    _check_tables(I, gt_I, k)
    tie_aware = _tie_mode(D, gt_D, I, gt_I, k)
    hits = 0
    valid = (gt_I[:, :k] >= 0).sum(axis=1)
    for i in range(len(I)):
        res = I[i, :k]
        ok = np.isin(res, gt_I[i, :k]) & (res >= 0)
        if tie_aware:
            ok |= (D[i, :k] >= gt_D[i, k - 1] - tol) & (res >= 0)
        # an id counts once even if the index returned it twice
        hits += min(len(np.unique(res[ok])), int(valid[i]))
    return hits / max(int(valid.sum()), 1)


def one_recall_at_k(
    I: np.ndarray,
    gt_I: np.ndarray,
    k: int,
    D: np.ndarray | None = None,
    gt_D: np.ndarray | None = None,
    tol: float = 1e-5,
) -> float:
    """Fraction of queries whose exact nearest neighbour is in the top-k result.

    With ``D`` and ``gt_D``: a result scoring within ``tol`` of the exact best also counts."""
    _check_tables(I, gt_I, 1)
    assert I.shape[1] >= k, f"result has {I.shape[1]} columns, need k={k}"
    tie_aware = _tie_mode(D, gt_D, I, gt_I, 1)
    ok = (I[:, :k] == gt_I[:, :1]).any(axis=1)
    if tie_aware:
        ok |= ((D[:, :k] >= gt_D[:, :1] - tol) & (I[:, :k] >= 0)).any(axis=1)
    return float(ok.mean())


def synthetic_clustered(
    n: int,
    d: int,
    n_clusters: int | None = None,
    sigma: float = 0.7,
    intrinsic_dim: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Seeded clustered unit vectors (n, d) float32, a stand-in for image embeddings.

    A point is centre + sigma * noise, normalised. Centres are random directions; cluster sizes
    are Zipf-like (a few big clusters, many small). Noise lives mostly in a shared subspace of
    ``intrinsic_dim`` (default d // 4) dimensions plus a small isotropic part, because real
    embeddings have a low intrinsic dimension. Draw queries from the same call (then split) so
    they follow the database distribution."""
    assert n > 0 and d > 1, f"need n > 0 and d > 1, got n={n}, d={d}"
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, int(np.sqrt(n)))
    r = intrinsic_dim or max(2, d // 4)
    assert r <= d, f"intrinsic_dim={r} > d={d}"
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
    assign = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0].T.astype(np.float32)  # (r, d)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):  # chunked to bound temporary memory at 1M+
        e = min(n, s + 65536)
        low = rng.standard_normal((e - s, r), dtype=np.float32) @ basis / np.sqrt(r)
        iso = rng.standard_normal((e - s, d), dtype=np.float32) * (0.3 / np.sqrt(d))
        x[s:e] = centres[assign[s:e]] + sigma * (low + iso)
    faiss.normalize_L2(x)
    return x


def _as_f32(x: np.ndarray) -> np.ndarray:
    assert x.ndim == 2, f"expected a 2-D array, got shape {x.shape}"
    return np.ascontiguousarray(x, dtype="float32")


def _check_tables(I: np.ndarray, gt_I: np.ndarray, k: int) -> None:
    assert I.ndim == 2 and gt_I.ndim == 2, f"need 2-D tables, got {I.shape} and {gt_I.shape}"
    assert len(I) == len(gt_I), f"{len(I)} result rows vs {len(gt_I)} ground-truth rows"
    assert 0 < k <= min(I.shape[1], gt_I.shape[1]), (
        f"k={k} exceeds table widths {I.shape[1]} (result) / {gt_I.shape[1]} (exact)"
    )


def _tie_mode(D, gt_D, I, gt_I, k) -> bool:
    assert (D is None) == (gt_D is None), "pass both D and gt_D for tie-aware recall, or neither"
    if D is None:
        return False
    assert D.shape == I.shape, f"D shape {D.shape} != I shape {I.shape}"
    assert gt_D.shape[0] == gt_I.shape[0] and gt_D.shape[1] >= k, f"gt_D shape {gt_D.shape}"
    return True
