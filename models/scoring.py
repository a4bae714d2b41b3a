"""Scoring candidate lists with a reranker, and what one scored candidate costs.

`score_candidates` is the one scoring loop: validation during training, the reranked
candidates, the full-VLM baseline, the champion comparison and `recommend` all call it.
Features are indexed by row (`features[query_rows]`, `features[cand_rows]`) one batch of
queries at a time, so a catalog of pixels is never copied whole; they may be embeddings
(N, d), uint8 pixels (N, S, S, 3), or a scorer's prepared features already on its device.
`prior` (N,) holds each row's engagement bucket (`models.rerank_head.prior_bucket`), indexed
the same way for the candidates. A query is one row, or a user's history: a row of H row
indices, oldest first, left padded with -1 (`query_rows` (Q, H)).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

CANDIDATES = 50  # candidates per query that retrieval hands a reranker


def feature_tensor(features) -> torch.Tensor:
    """Reranker input as a tensor: uint8 pixels stay uint8, embeddings become float32."""
    if torch.is_tensor(features):
        t = features
    else:
        with warnings.catch_warnings():
            # read-only memmaps (the lake's pixels) are shared, not copied; nothing writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.as_tensor(np.ascontiguousarray(features))
    return t if t.dtype == torch.uint8 else t.float()


def query_inputs(features, rows, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(query features, history mask or None) of query `rows`: (B,) one image each, or (B, H)
    histories padded with -1 (the mask marks the real images). A history of one image is that
    image: (B, H) rows holding one real image each take the one-image layout, so a query has
    the same prompt however its rows are stored (training stores image queries as one-image
    histories; evaluation and serving pass them as (B,))."""
    rows = np.asarray(rows)
    if rows.ndim == 2 and len(rows) and ((rows >= 0).sum(1) == 1).all():
        rows = rows.max(axis=1)  # the one real row of each (padding is -1)
    feats = feature_tensor(features[np.maximum(rows, 0)])
    history = None if rows.ndim == 1 else torch.as_tensor(rows >= 0)
    if device is not None:
        feats = feats.to(device)
        history = None if history is None else history.to(device)
    return feats, history


def prior_tensor(prior, rows) -> torch.Tensor:
    """Engagement buckets of `rows` (any shape) from the per-row `prior` (N,), as int64."""
    return torch.as_tensor(np.asarray(prior)[np.asarray(rows)], dtype=torch.long)


def device_of(scorer) -> torch.device:
    """The device of a scorer's parameters."""
    return next(scorer.parameters()).device


@torch.no_grad()
def score_candidates(scorer, features, query_rows, cand_rows, batch: int = 8,
                     progress: Callable[[int, int], None] | None = None,
                     query_features=None, prior=None) -> np.ndarray:
    """Scores (Q, K) float32 of each query's K candidates, `batch` queries at a time.

    `query_rows` (Q,) and `cand_rows` (Q, K) index `features`. `query_features` (Q, ...)
    replaces `features[query_rows]` for queries outside the catalog. `prior` (N,) gives the
    candidates' engagement buckets (None: unknown). The scorer's training mode is restored
    afterwards.
    """
    query_rows, cand_rows = np.asarray(query_rows), np.asarray(cand_rows)
    n = len(cand_rows)
    device = device_of(scorer)
    was_training = scorer.training
    scorer.eval()
    # one-image queries and longer histories are batched apart, as in training: a batch of
    # one-image queries takes the one-image layout (query_inputs)
    multi = np.zeros(n, bool) if query_rows.ndim == 1 else (query_rows >= 0).sum(1) > 1
    batches = [kind[i: i + batch] for kind in (np.flatnonzero(~multi), np.flatnonzero(multi))
               for i in range(0, len(kind), batch)]
    out, done = [], 0
    try:
        for rows in batches:
            q, history = query_inputs(features, query_rows[rows], device) if query_features is None else (
                feature_tensor(query_features[rows]).to(device), None)
            c = feature_tensor(features[cand_rows[rows]]).to(device)
            p = None if prior is None else prior_tensor(prior, cand_rows[rows])
            out.append(scorer.score(q, c, prior=p, history=history).float().cpu().numpy())
            done += len(rows)
            if progress is not None:
                progress(done, n)
    finally:
        scorer.train(was_training)
    scores = None
    if out:
        scores = np.empty((n, out[0].shape[1]), np.float32)
        scores[np.concatenate(batches)] = np.concatenate(out)
    if scores is not None and not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ValueError(f"the reranker gave {bad} of {scores.size} scores that are not finite: its weights "
                         "or inputs are damaged; retrain it (or roll back the champion)")
    return scores if scores is not None else np.zeros((0, cand_rows.shape[1] if cand_rows.ndim == 2 else 0), np.float32)
