"""Training-group mining and co-engagement counting (assets.pairs). Tiny hand-made inputs."""

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from assets.pairs import PairConfig, coengagement, mine_groups

CFG = PairConfig(negatives=2, max_groups_per_query=2, seed=0)
# row 0's neighbours, nearest first: 5 and 7 are relevant, 1 2 3 4 6 are not; -1 is padding
NEIGHBOURS = np.full((10, 8), -1)
NEIGHBOURS[0] = [0, 1, 5, 2, 3, 7, 4, 6]


def test_groups_come_from_the_neighbourhood():
    groups = mine_groups({0: {5, 7, 9}}, NEIGHBOURS, CFG)
    assert groups.shape == (2, 4)
    assert set(groups[:, 0]) == {0}
    assert set(groups[:, 1]) == {5, 7}  # 9 is relevant but not a neighbour: never a positive
    near = list(NEIGHBOURS[0])
    for row in groups:
        negs = list(row[2:])
        assert not set(negs) & {0, 5, 7, 9}
        assert set(negs) <= {1, 2, 3, 4, 6}
        assert negs == sorted(negs, key=near.index)  # kept in neighbour (cosine) order


def test_positive_is_not_always_ranked_last_by_the_index():
    """The old shortcut: the nearest non-relevant neighbours as negatives put the positive last."""
    rng = np.random.default_rng(1)
    n = 200
    neighbours = np.stack([np.concatenate([[q], rng.permutation(np.delete(np.arange(n), q))[:30]]) for q in range(n)])
    relevant = {q: set(rng.choice(n, 20, replace=False).tolist()) - {q} for q in range(n)}
    groups = mine_groups(relevant, neighbours, PairConfig(negatives=7, max_groups_per_query=1))
    ranks = [list(neighbours[g[0]]).index(g[1]) for g in groups]
    last = [r > max(list(neighbours[g[0]]).index(j) for j in g[2:]) for g, r in zip(groups, ranks, strict=True)]
    assert len(groups) > 100
    assert 0.05 < np.mean(last) < 0.6


def test_queries_without_a_relevant_neighbour_or_any_negatives_are_skipped():
    assert mine_groups({0: {9}}, NEIGHBOURS, CFG).shape == (0, 4)
    assert mine_groups({0: set(range(1, 10))}, NEIGHBOURS, CFG).shape == (0, 4)  # all relevant
    assert mine_groups({}, NEIGHBOURS, CFG).shape == (0, 4)


def test_dense_engagement_tops_negatives_up_from_the_catalog():
    # only 7 and 6 of the neighbours are non-relevant; rows 8 and 9 lie outside the neighbourhood
    groups = mine_groups({0: {1, 2, 3, 4, 5}}, NEIGHBOURS, PairConfig(negatives=3, max_groups_per_query=5))
    assert groups.shape == (5, 5)
    for row in groups:
        negs = set(row[2:].tolist())
        assert {6, 7} <= negs and negs - {6, 7} <= {8, 9}


def test_label_relevance_excludes_same_label_negatives():
    labels = ["a", "a", "a", "b", "b", "a", "b", "a", "b", "b"]
    groups = mine_groups({0: {5, 7}}, NEIGHBOURS, CFG, labels)
    for row in groups:
        assert all(labels[j] != "a" for j in row[2:])


def test_mining_is_deterministic():
    rel = {0: {5, 7}}
    assert np.array_equal(mine_groups(rel, NEIGHBOURS, CFG), mine_groups(rel, NEIGHBOURS, CFG))


def test_coengagement_splits_by_user_and_time(tmp_path):
    """Train pairs use only events before the cut-off; test pairs only later events of test users."""
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = []
    for u in range(200):
        for k, img in enumerate(("x", "y", "z")):
            rows.append({"user_id": f"u{u}", "image_id": img, "ts": t0 + timedelta(days=k * 10)})
    path = tmp_path / "events.parquet"
    pl.DataFrame(rows).write_parquet(path)
    out = coengagement(str(path), PairConfig(time_quantile=0.7))  # cut-off: day 20
    train = {(a, b) for a, b in zip(out["train"]["a"], out["train"]["b"], strict=True)}
    test = {(a, b) for a, b in zip(out["test"]["a"], out["test"]["b"], strict=True)}
    assert train == {("x", "y"), ("y", "x")}  # z happens after the cut-off
    assert test == set()  # after the cut-off each test user has only z: no pair
    assert out["train"]["n"].max() <= 200 * 0.7 + 20  # train users only, not val or test users
