"""The catalog and its features in the index's row order. No Dagster here.

Row i is `image_id` i of the current index generation (its `ids.parquet`), so FAISS ids are
rows: the reranker's training groups, the evaluation's candidates and `recommend` all address
images by these rows, in embeddings (gutted model) or pixels (full VLM), with each row's
engagement prior. The embeddings must be those of the encoder that built the generation.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.ingestion.coengagement import SplitConfig, popularity
from assets.retrieval.index_store import load_index
from assets.store.files import Home
from assets.store.lake import catalog, load_pixels, read_table
from models.rerank_head import prior_bucket


def aligned_catalog(home: Home) -> tuple[pl.DataFrame, np.ndarray]:
    """(catalog frame in index row order, embeddings (N, d) float32 in the same order)."""
    _, ids, state = load_index(home, mmap=True)
    order = pl.DataFrame({"image_id": ids}).with_row_index("pos")
    frame = order.join(catalog(home), on="image_id", how="left").sort("pos")
    emb = read_table(home, "image_embeddings").select("image_id", "embedding", "encoder_version")
    emb = order.join(emb, on="image_id", how="left").sort("pos")
    assert emb["embedding"].null_count() == 0, "index holds image ids without embeddings; rebuild the index"
    other = emb.filter(pl.col("encoder_version") != state["encoder_version"])
    if other.height:  # re-embedded by a newer encoder, and the index not rebuilt yet
        raise ValueError(
            f"the index holds encoder {state['encoder_version']}'s vectors but {other.height} of its images are "
            f"now embedded by encoder {other['encoder_version'][0]}: faiss_index is not rebuilt yet; "
            f"finish it with `lensless run` (or let automation finish) and retry")
    return frame, np.ascontiguousarray(emb["embedding"].to_numpy(), dtype=np.float32)


def aligned_pixels(home: Home, frame: pl.DataFrame) -> np.ndarray:
    """Canonical pixels in the row order of `frame` (from `aligned_catalog`)."""
    return load_pixels(home, frame.select("batch", "row"))


def rows_of(frame: pl.DataFrame) -> dict[str, int]:
    """{image_id: row} of an aligned catalog."""
    return {k: i for i, k in enumerate(frame["image_id"].to_list())}


def engagement_counts(home: Home, frame: pl.DataFrame, split: SplitConfig = SplitConfig()) -> np.ndarray:
    """Train-split engagement count (int64) of every row of `frame`; 0 without engagement."""
    pop = popularity(home, split)
    n = dict(zip(pop["image_id"].to_list(), pop["n"].to_list(), strict=True))
    return np.array([n.get(i, 0) for i in frame["image_id"].to_list()], dtype=np.int64)


def engagement_prior(home: Home, frame: pl.DataFrame, split: SplitConfig = SplitConfig()) -> np.ndarray:
    """The rerankers' prior (N,): each row's train-split engagement count in log2 buckets."""
    return prior_bucket(engagement_counts(home, frame, split))
