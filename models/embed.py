"""Embed pixels with a trained encoder, streaming in bounded mini-batches.

`iter_embeddings` takes an array (possibly a memmap) or any iterable of uint8 chunks
(n_i, S, S, 3) and yields float32 (b, d) blocks of at most `batch_size` rows, so peak memory
is set by the batch size and not by N. `embed_pixels` concatenates them into one (N, d) array.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from models.encoder import ImageEncoder


def _chunks(pixels: np.ndarray | Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Re-chunk an array or an iterable of arrays into pieces of at most batch_size rows."""
    if isinstance(pixels, np.ndarray):
        arr = pixels[None] if pixels.ndim == 3 else pixels  # one image (S, S, 3), not S rows
        pixels = (arr[i : i + batch_size] for i in range(0, len(arr), batch_size))
    for chunk in pixels:
        chunk = np.asarray(chunk)
        if chunk.ndim == 3:  # a single image
            chunk = chunk[None]
        for i in range(0, len(chunk), batch_size):
            yield chunk[i : i + batch_size]


def iter_embeddings(
    model: ImageEncoder, pixels: np.ndarray | Iterable[np.ndarray], batch_size: int = 256
) -> Iterator[np.ndarray]:
    """Yield float32 (b, d) embeddings for uint8 (n, S, S, 3) pixels, b <= batch_size."""
    assert batch_size > 0, f"batch_size must be > 0, got {batch_size}"
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for chunk in _chunks(pixels, batch_size):
                assert chunk.dtype == np.uint8 and chunk.ndim == 4 and chunk.shape[-1] == 3, (
                    f"pixel chunks must be uint8 (n, S, S, 3), got {chunk.dtype} {chunk.shape}"
                )
                yield model(np.ascontiguousarray(chunk)).float().cpu().numpy()
    finally:
        model.train(was_training)


def embed_pixels(
    model: ImageEncoder, pixels: np.ndarray | Iterable[np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """float32 (N, d) unit-norm embeddings of uint8 pixels given as one array or as chunks."""
    blocks = list(iter_embeddings(model, pixels, batch_size))
    if not blocks:
        return np.zeros((0, model.config.dim), dtype=np.float32)
    return np.concatenate(blocks).astype(np.float32, copy=False)
