"""What the encoder trains on (assets.embeddings.quality): the held-out split and its pairs."""

import numpy as np
import polars as pl

from assets.embeddings.quality import training_rows
from assets.ingestion.coengagement import image_splits
from assets.reranker.pairs import split_relevance


def test_no_evaluation_query_is_an_encoder_training_image(home):
    """Labels only: the evaluation's queries are the test images, which the encoder never sees."""
    rng = np.random.default_rng(0)
    ids = [f"{i:016x}" for i in rng.integers(0, 2**62, 3000)]
    frame = pl.DataFrame({"image_id": ids, "label": [f"l{i % 7}" for i in range(len(ids))]})
    rel, source = split_relevance(home, frame)  # no engagement log in this home
    assert source == "labels"
    train_rows, held = training_rows(ids, max_images=20_000)
    queries = set(rel["test"])
    assert len(queries) > 400
    assert not queries & set(train_rows.tolist())
    assert queries == set(np.flatnonzero(held).tolist()) == set(np.flatnonzero(image_splits(ids) == "test").tolist())
    # a sample below the catalog size still never draws a held-out image
    sample, _ = training_rows(ids, max_images=500, seed=3)
    assert len(sample) == 500 and not set(sample.tolist()) & queries


def test_encoder_takes_the_strongest_train_pairs(monkeypatch):
    """The encoder's pair term gets the max_pairs strongest pairs among training images, each once."""
    import assets.embeddings.quality as ee

    both = [("a", "b", 1), ("a", "c", 7), ("b", "c", 2), ("c", "d", 3), ("a", "h", 9), ("b", "d", 1)]
    frame = pl.DataFrame([(x, y, n) for a, b, n in both for x, y in ((a, b), (b, a))], schema=["a", "b", "n"],
                         orient="row")
    monkeypatch.setattr(ee, "engagement_pairs", lambda home, split: frame if split == "train" else None)
    ids = ["a", "h", "b", "c", "d"]
    train_rows = np.array([0, 2, 3, 4])  # h is held out: its pair (a, h, 9) is never used

    def as_ids(rows):  # rows index the training subset, not the catalog
        return {tuple(sorted(ids[train_rows[j]] for j in r)) for r in rows.tolist()}

    assert as_ids(ee.train_pairs_rows(None, ids, train_rows, max_pairs=2)) == {("a", "c"), ("c", "d")}
    every = ee.train_pairs_rows(None, ids, train_rows)
    assert len(every) == 5 and as_ids(every) == {("a", "b"), ("a", "c"), ("b", "c"), ("c", "d"), ("b", "d")}
    assert every.min() >= 0 and every.max() < len(train_rows)  # rows of the training subset
    ties = {frozenset(as_ids(ee.train_pairs_rows(None, ids, train_rows, max_pairs=4, seed=s))) for s in range(8)}
    assert all({("a", "c"), ("c", "d"), ("b", "c")} < t for t in ties) and len(ties) == 2  # the n=1 tie, by seed
