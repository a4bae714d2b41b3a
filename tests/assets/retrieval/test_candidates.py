"""Candidates from two sources: index neighbours and popular images, merged and chosen on
validation recall, for an image or for a user's history."""

from __future__ import annotations

import faiss
import numpy as np
import polars as pl

from assets.retrieval.candidates import (
    CandidateConfig,
    Queries,
    choose_share,
    frame_rows,
    index_neighbours,
    merge_sources,
    recall_at,
)


def _emb(n=20, d=8, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_merge_takes_the_share_from_popular_fills_from_the_index_and_orders_by_cosine():
    emb = _emb()
    q = Queries.images(emb, [0])
    popular = np.array([0, 9, 8, 1, 7])  # 0 is the query itself: never a candidate
    out = merge_sources(emb, q.anchors, [[1, 2, 3, 4, 5, 6]], popular, k=4, share=0.5, exclude=q.exclude)
    assert dict(zip(out.rows[0].tolist(), out.source[0].tolist(), strict=True)) == {
        9: "popular", 8: "popular", 1: "index", 2: "index"}
    np.testing.assert_allclose(out.scores[0], emb[out.rows[0]] @ emb[0], rtol=1e-6)
    assert (np.diff(out.scores[0]) <= 0).all()  # retrieval order: cosine, highest first


def test_a_short_source_is_filled_by_the_other_and_nothing_repeats():
    emb = _emb()
    q = Queries.images(emb, [3])
    out = merge_sources(emb, q.anchors, [[4, 5]], np.array([5, 6, 7, 8]), k=5, share=0.2, exclude=q.exclude)
    assert sorted(out.rows[0].tolist()) == [4, 5, 6, 7, 8]
    none = merge_sources(emb, q.anchors, [[4, 5, 6]], np.array([], dtype=np.int64), k=3, share=0.5, exclude=q.exclude)
    assert sorted(none.rows[0].tolist()) == [4, 5, 6] and set(none.source[0]) == {"index"}


def test_a_users_candidates_are_near_any_recent_history_image_and_never_in_the_history():
    emb = _emb(60)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    users = Queries.histories(emb, [[10, 11, 12, 13]], recent=2)  # anchors: 12 and 13
    assert users.exclude == [{10, 11, 12, 13}]
    near = index_neighbours(index, users.anchors, 8, users.exclude)[0]
    assert not set(near) & {10, 11, 12, 13} and len(near) == 8
    best = (emb[near] @ emb[[12, 13]].T).max(axis=1)
    assert (np.diff(best) <= 1e-6).all()  # ordered by the best cosine to either anchor
    truth = np.argsort(-(emb @ emb[[12, 13]].T).max(axis=1))
    assert near == [int(j) for j in truth if j not in {10, 11, 12, 13}][:8]


def test_the_share_with_the_best_validation_recall_wins_and_ties_go_to_the_index():
    emb = _emb(40)
    q = Queries.images(emb, range(5))
    near = [[j for j in range(40) if j != i][:10] for i in range(5)]
    popular = np.arange(39, 19, -1)  # 39, 38, ... 20
    cfg = CandidateConfig(k=10)
    in_popular = [{39, 38, 37}] * 5  # relevance sits in the popular images
    assert choose_share(emb, q.anchors, near, popular, q.exclude, in_popular, cfg)["share"] > 0
    in_neighbours = [set(n[:3]) for n in near]  # relevance sits in the neighbours
    assert choose_share(emb, q.anchors, near, popular, q.exclude, in_neighbours, cfg)["share"] == 0.0
    assert recall_at([[1, 2], [3]], [{1, 5}, set()]) == 0.5  # queries without relevance left out


def test_rows_of_a_newer_index_generation_are_mapped_to_the_catalog_read_before_it():
    frame = pl.DataFrame({"image_id": ["a", "b", "c"]})
    assert frame_rows(np.array(["a", "b", "c"], dtype=object), frame) is None  # one generation
    # faiss_index switched generations in between: a rebuild reordered the rows and added "d"
    newer = np.array(["c", "d", "a", "b"], dtype=object)
    assert frame_rows(newer, frame).tolist() == [2, -1, 0, 1]


def test_a_query_is_never_its_own_candidate_when_the_index_switched_generations():
    """The catalog is read, then faiss_index switches to a build holding the same images in
    another row order (and one more): exclusions apply to catalog rows, after the mapping."""
    emb = _emb(6)
    frame = pl.DataFrame({"image_id": list("abcdef")})
    order = [5, 4, 3, 2, 1, 0]
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.concatenate([emb[order], _emb(1, seed=9)]))
    rows = frame_rows(np.array([*(frame["image_id"][i] for i in order), "new"], dtype=object), frame)
    q = Queries.images(emb, [0])
    near = index_neighbours(index, q.anchors, 4, q.exclude, rows)
    assert 0 not in near[0] and len(near[0]) == 4
    truth = [int(j) for j in np.argsort(-(emb @ emb[0])) if j != 0][:4]
    assert near[0] == truth
    out = merge_sources(emb, q.anchors, [[0, *truth]], np.array([], dtype=np.int64), 4, 0.0, q.exclude)
    assert 0 not in out.rows[0]  # merging drops excluded rows whatever it is given
