"""Embedding quality metrics and reference embeddings, as small array functions.

- `knn_label_precision`: mean share of a query's k cosine nearest neighbours (self excluded)
  that carry the query's label.
- `coengagement_recall_at_k`: share of co-engaged pairs (i, j) where j is among i's k nearest
  neighbours (both directions counted).
- `pixel_baseline`: the raw-pixel reference embedding, downsampled pixels projected by PCA.
- `digits_pixels`: a labelled image set built from scikit-learn's digits, clean or "in the
  wild" (random placement, rotation, colours, cluttered background, noise), for quality tests.

Similarities are computed in query blocks of `block` rows, so memory stays O(block * N).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _topk(emb: np.ndarray, queries: np.ndarray, k: int, block: int = 1024):
    """Yield (query rows, (q, k) neighbour rows) by cosine similarity, excluding each query itself."""
    assert 0 < k < len(emb), f"k={k} must be in [1, {len(emb) - 1}] for {len(emb)} rows"
    for s in range(0, len(queries), block):
        q = queries[s : s + block]
        sims = emb[q] @ emb.T  # (q, N)
        sims[np.arange(len(q)), q] = -np.inf
        nn = np.argpartition(-sims, k, axis=1)[:, :k]
        yield q, nn


def knn_label_precision(
    emb: np.ndarray, labels: np.ndarray, k: int = 10, query_idx: np.ndarray | None = None
) -> float:
    """Mean precision@k of same-label cosine neighbours. Rows labelled -1 are neither queries nor
    neighbours; `query_idx` (default: every labelled row) picks the queries among all rows."""
    labels = np.asarray(labels)
    assert len(emb) == len(labels), f"{len(emb)} embeddings but {len(labels)} labels"
    known = np.flatnonzero(labels >= 0)
    queries = known if query_idx is None else np.intersect1d(np.asarray(query_idx), known)
    assert len(queries), "no labelled query rows"
    # Work inside the labelled subset so that unknown rows never appear as neighbours.
    pos = np.full(len(labels), -1)
    pos[known] = np.arange(len(known))
    sub, lab = _unit(emb[known]), labels[known]
    hits = [(lab[nn] == lab[q][:, None]).mean(1) for q, nn in _topk(sub, pos[queries], k)]
    return float(np.concatenate(hits).mean())


def coengagement_recall_at_k(emb: np.ndarray, pairs: np.ndarray, k: int = 10) -> float:
    """Share of directed pairs (i -> j and j -> i) where j is among i's k cosine neighbours."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    assert len(pairs), "no pairs"
    assert pairs.min() >= 0 and pairs.max() < len(emb), (
        f"pair indices [{pairs.min()}, {pairs.max()}] outside [0, {len(emb)})"
    )
    directed = np.concatenate([pairs, pairs[:, ::-1]])
    anchors, inv = np.unique(directed[:, 0], return_inverse=True)
    neigh = np.concatenate([nn for _, nn in _topk(_unit(emb), anchors, k)])  # (A, k)
    return float((neigh[inv] == directed[:, 1:2]).any(1).mean())


def pixel_baseline(
    pixels: np.ndarray, d: int, fit_idx: np.ndarray, size: int = 16, chunk: int = 1024
) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, d') unit vectors: area-downsample to size x size RGB,
    then PCA fitted on rows `fit_idx` (d' = min(d, len(fit_idx), 3 * size**2))."""
    from sklearn.decomposition import PCA

    assert pixels.ndim == 4 and pixels.shape[-1] == 3, (
        f"pixels must be (N, S, S, 3), got {pixels.shape}"
    )
    flat = []
    for i in range(0, len(pixels), chunk):
        x = (
            torch.from_numpy(np.ascontiguousarray(pixels[i : i + chunk]))
            .permute(0, 3, 1, 2)
            .float()
        )
        flat.append(F.interpolate(x / 255.0, size=(size, size), mode="area").flatten(1).numpy())
    flat = np.concatenate(flat)  # (N, 3 * size * size)
    fit_idx = np.asarray(fit_idx)
    n_comp = min(d, len(fit_idx), flat.shape[1])
    pca = PCA(n_components=n_comp, random_state=0).fit(flat[fit_idx])
    return _unit(pca.transform(flat))


def digits_pixels(
    size: int = 64, wild: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as uint8 (N, size, size, 3) RGB and int labels (N,).

    Clean: white strokes on black, upscaled. Wild: each digit scaled 0.45-0.9 of the frame,
    rotated +-20 degrees, placed anywhere, in a contrasting tint over a smooth random-colour
    background with up to 3 clutter rectangles and pixel noise; the pixel baseline struggles there.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.from_numpy(digits.images / 16.0).float()[:, None]  # (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    n = len(labels)
    if not wild:
        x = F.interpolate(ink, size=(size, size), mode="bilinear", align_corners=False)
        return (
            x.clamp(0, 1).mul(255).round().byte().expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy(),
            labels,
        )
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    scale = 0.45 + 0.45 * rand(n)
    a = (rand(n) * 2 - 1) * math.radians(20)
    shift = (rand(n, 2) * 2 - 1) * (1 - scale[:, None])
    # Output -> input grid map: inverse of "scale, rotate, then shift".
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    theta = torch.stack(
        [
            torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], -1),
            torch.stack([-sin, cos, -(-sin * shift[:, 0] + cos * shift[:, 1])], -1),
        ],
        1,
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    mask = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    bg = 0.15 + 0.7 * F.interpolate(
        rand(n, 3, 3, 3), size=(size, size), mode="bicubic", align_corners=False
    )
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(3):
        box = rand(n, 4) * torch.tensor([size, size, size / 3, size / 3])  # x, y, w, h
        on = (rand(n) < 0.7).view(n, 1, 1)
        inside = (xx >= box[:, 0, None, None]) & (xx < (box[:, 0] + box[:, 2])[:, None, None])
        inside &= (yy >= box[:, 1, None, None]) & (yy < (box[:, 1] + box[:, 3])[:, None, None])
        bg = torch.where((inside & on)[:, None], rand(n, 3, 1, 1), bg)
    # Ink is dark on a light background and light on a dark one, in a random tint.
    light = (bg.mean((1, 2, 3)) < 0.5).view(n, 1, 1, 1)
    fg = torch.where(light, 0.75 + 0.25 * rand(n, 3, 1, 1), 0.25 * rand(n, 3, 1, 1))
    img = bg * (1 - mask) + fg * mask + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return img.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy(), labels
