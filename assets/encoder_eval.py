"""Held-out split and quality metrics for the encoder asset. No Dagster here.

The held-out split is by a hash of `image_id`, so it is stable as batches arrive. Quality is
kNN@10 label precision among held-out images (queries and neighbours both held out) for:
our encoder, a raw-pixel baseline (16×16 area-downsampled RGB, PCA to d, fitted on the
training images) and the same architecture at its random initialisation. With engagement,
co-engagement recall@10 over the test-split pairs is reported for ours and the pixel baseline.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from assets.pairs import coengagement, strongest_first
from assets.storage import lake_path
from models.embed import embed_pixels
from models.embedding_eval import coengagement_recall_at_k, knn_label_precision, pixel_baseline


def holdout_mask(image_ids, fraction: float) -> np.ndarray:
    """True for images held out of training: sha256(image_id) bucket < fraction."""
    assert 0.0 <= fraction < 1.0, f"holdout fraction must be in [0, 1), got {fraction}"
    return np.array([int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction for i in image_ids])


def _pairs_as_rows(pairs, image_ids: list[str], rows: np.ndarray | None = None) -> np.ndarray:
    pos = {k: i for i, k in enumerate(image_ids)}
    if rows is not None:  # re-index into the subset `rows`
        sub = {int(r): j for j, r in enumerate(rows)}
        pos = {k: sub[i] for k, i in pos.items() if i in sub}
    out = [(pos[a], pos[b]) for a, b in zip(pairs["a"], pairs["b"], strict=True) if a in pos and b in pos and a < b]
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def engagement_pairs(split: str) -> object | None:
    """Co-engagement pairs of one split, or None without an engagement log."""
    path = lake_path("engagement_events")
    if not path.exists():
        return None
    return coengagement(str(path))[split]


def train_pairs_rows(image_ids: list[str], train_rows: np.ndarray, max_pairs: int = 0, seed: int = 0) -> np.ndarray:
    """Train-split co-engagement pairs as (P, 2) indices into the training subset.

    With `max_pairs` > 0, only the strongest that many (most users behind the pair; equal
    strengths in a seeded random order): on the demo catalog a pair shared by one user links
    two images of the same taste about half the time, one shared by five or more nearly always,
    and the encoder meets only a few thousand pairs in its whole budget.
    """
    pairs = engagement_pairs("train")
    if pairs is None or pairs.height == 0:
        return np.zeros((0, 2), np.int64)
    trained = [image_ids[int(r)] for r in train_rows]
    pairs = pairs.filter(pl.col("a").is_in(trained) & pl.col("b").is_in(trained) & (pl.col("a") < pl.col("b")))
    if 0 < max_pairs < pairs.height:
        pairs = pairs[strongest_first(pairs["n"].to_numpy(), np.random.default_rng(seed))[:max_pairs]]
    return _pairs_as_rows(pairs, image_ids, train_rows)


def evaluate_encoder(model, random_init, pixels: np.ndarray, labels: np.ndarray, held: np.ndarray,
                     image_ids: list[str]) -> dict:
    """Quality of `model` vs the pixel baseline and `random_init` on the held-out images."""
    emb = embed_pixels(model, pixels)
    rand = embed_pixels(random_init, pixels)
    pix = pixel_baseline(pixels, model.config.dim, np.flatnonzero(~held))
    out = {"ours_knn_precision_at_10": None, "pixel_knn_precision_at_10": None,
           "random_init_knn_precision_at_10": None}
    h = np.flatnonzero(held)
    if (labels[h] >= 0).sum() > 10:
        for name, e in (("ours", emb), ("pixel", pix), ("random_init", rand)):
            out[f"{name}_knn_precision_at_10"] = knn_label_precision(e[h], labels[h], k=10)
    pairs = engagement_pairs("test")
    if pairs is not None and pairs.height:
        rows = _pairs_as_rows(pairs, image_ids)
        if len(rows):
            out["ours_coengagement_recall_at_10"] = coengagement_recall_at_k(emb, rows, 10)
            out["pixel_coengagement_recall_at_10"] = coengagement_recall_at_k(pix, rows, 10)
    return out
