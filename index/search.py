"""Batched kNN search and mapping of int64 row ids back to caller keys (image_id strings)."""

# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

from __future__ import annotations

import faiss
import numpy as np


def search(
    index: faiss.Index, xq: np.ndarray, k: int, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Search xq in ``batch_size`` chunks -> (D, I), each (nq, k), best first.

    Chunking bounds the per-call scratch memory (result heaps, GPU buffers) on huge query
    sets; each chunk is still multi-threaded by faiss. Missing results are I = -1 with
    D = -inf (inner product)."""
    assert xq.ndim == 2, f"queries must be (nq, d), got shape {xq.shape}"
    assert xq.shape[1] == index.d, f"queries have d={xq.shape[1]}, index has d={index.d}"
    assert k > 0 and batch_size > 0, (
        f"need k > 0 and batch_size > 0, got k={k}, batch_size={batch_size}"
    )
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq = len(xq)
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    for s in range(0, nq, batch_size):
        D[s : s + batch_size], I[s : s + batch_size] = index.search(xq[s : s + batch_size], k)
    if index.metric_type == faiss.METRIC_L2:
        D = 1 - D / 2
    D[I < 0] = -np.inf
    return D, I


def ids_to_keys(I: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Object array shaped like I with keys[I], and None where I == -1 (no result)."""
    keys = np.asarray(keys)
    assert keys.ndim == 1, f"keys must be 1-D (one key per row id), got shape {keys.shape}"
    valid = I >= 0
    if valid.any():
        hi = int(I[valid].max())
        assert hi < len(keys), f"row id {hi} out of range for {len(keys)} keys"
    out = np.full(I.shape, None, dtype=object)
    out[valid] = keys[I[valid]].tolist()  # plain str, not np.str_
    return out
