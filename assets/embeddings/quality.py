"""What the encoder trains on, and how good it is. No Dagster here.

The encoder never sees a `test` image (`coengagement.image_splits`: the same split the
evaluation uses without engagement). Quality is kNN@10 label precision among those held-out
images (queries and neighbours both held out) for: our encoder, a raw-pixel baseline (16×16
area-downsampled RGB, PCA to d, fitted on the training images) and the same architecture at
its random initialisation. With engagement, co-engagement recall@10 over the test-split
pairs is reported for ours and the pixel baseline.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.ingestion.coengagement import coengagement, image_splits, strongest_first
from assets.store.files import Home
from models.embed import embed_pixels
from models.embedding_eval import coengagement_recall_at_k, knn_label_precision, pixel_baseline


def training_rows(image_ids, max_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows the encoder trains on, held-out mask): every image outside the `test` split, a
    seeded sample of `max_images` of them past that."""
    held = image_splits(image_ids) == "test"
    rows = np.flatnonzero(~held)
    if len(rows) > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    return rows, held


def _pairs_as_rows(pairs, image_ids: list[str], rows: np.ndarray | None = None) -> np.ndarray:
    pos = {k: i for i, k in enumerate(image_ids)}
    if rows is not None:  # re-index into the subset `rows`
        sub = {int(r): j for j, r in enumerate(rows)}
        pos = {k: sub[i] for k, i in pos.items() if i in sub}
    out = [(pos[a], pos[b]) for a, b in zip(pairs["a"], pairs["b"], strict=True) if a in pos and b in pos and a < b]
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def engagement_pairs(home: Home, split: str) -> pl.DataFrame | None:
    """Co-engagement pairs of one split, or None without an engagement log."""
    per_split = coengagement(home, splits=(split,))
    return None if per_split is None else per_split[split]


def train_pairs_rows(home: Home, image_ids: list[str], train_rows: np.ndarray, max_pairs: int = 0,
                     seed: int = 0) -> np.ndarray:
    """Train-split co-engagement pairs as (P, 2) indices into the training subset.

    With `max_pairs` > 0, only the strongest that many (most users behind the pair; equal
    strengths in a seeded random order): the encoder meets only a few thousand pairs in its
    whole budget, and a pair shared by many users is stronger evidence of the same taste.
    """
    pairs = engagement_pairs(home, "train")
    if pairs is None or pairs.height == 0:
        return np.zeros((0, 2), np.int64)
    trained = [image_ids[int(r)] for r in train_rows]
    pairs = pairs.filter(pl.col("a").is_in(trained) & pl.col("b").is_in(trained) & (pl.col("a") < pl.col("b")))
    if 0 < max_pairs < pairs.height:
        pairs = pairs[strongest_first(pairs["n"].to_numpy(), np.random.default_rng(seed))[:max_pairs]]
    return _pairs_as_rows(pairs, image_ids, train_rows)


def evaluate_encoder(home: Home, model, random_init, pixels: np.ndarray, labels: np.ndarray, held: np.ndarray,
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
    pairs = engagement_pairs(home, "test")
    if pairs is not None and pairs.height:
        rows = _pairs_as_rows(pairs, image_ids)
        if len(rows):
            out["ours_coengagement_recall_at_10"] = coengagement_recall_at_k(emb, rows, 10)
            out["pixel_coengagement_recall_at_10"] = coengagement_recall_at_k(pix, rows, 10)
    return out
