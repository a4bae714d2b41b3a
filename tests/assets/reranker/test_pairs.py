"""Training-group mining and budgets (assets.reranker.pairs). Tiny hand-made inputs."""

import numpy as np
import polars as pl

from assets.reranker.pairs import PairConfig, budget_groups, mine_groups, training_set
from assets.store.lake import GROUP_SCHEMA, USER_SCHEMA, write_table

CFG = PairConfig(negatives=2, max_groups_per_query=2, seed=0)
# row 0's neighbours, nearest first: 5 and 7 are relevant, 1 2 3 4 6 are not; -1 is padding
NEIGHBOURS = np.full((10, 8), -1)
NEIGHBOURS[0] = [0, 1, 5, 2, 3, 7, 4, 6]


def rel(*rows, n=1):
    """Relevance {row: strength} with every strength n."""
    return dict.fromkeys(rows, n)


def test_groups_come_from_the_neighbourhood():
    groups, strength = mine_groups({0: rel(5, 7, 9)}, NEIGHBOURS, CFG)
    assert strength.tolist() == [1, 1]
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
    relevant = {q: rel(*(set(rng.choice(n, 20, replace=False).tolist()) - {q})) for q in range(n)}
    groups, _ = mine_groups(relevant, neighbours, PairConfig(negatives=7, max_groups_per_query=1))
    ranks = [list(neighbours[g[0]]).index(g[1]) for g in groups]
    last = [r > max(list(neighbours[g[0]]).index(j) for j in g[2:]) for g, r in zip(groups, ranks, strict=True)]
    assert len(groups) > 100
    assert 0.05 < np.mean(last) < 0.6


def test_queries_without_a_relevant_neighbour_or_any_negatives_are_skipped():
    assert mine_groups({0: rel(9)}, NEIGHBOURS, CFG)[0].shape == (0, 4)
    assert mine_groups({0: rel(*range(1, 10))}, NEIGHBOURS, CFG)[0].shape == (0, 4)  # all relevant
    groups, strength = mine_groups({}, NEIGHBOURS, CFG)
    assert groups.shape == (0, 4) and strength.shape == (0,)


def test_dense_engagement_tops_negatives_up_from_the_catalog():
    # only 7 and 6 of the neighbours are non-relevant; rows 8 and 9 lie outside the neighbourhood
    groups, _ = mine_groups({0: rel(1, 2, 3, 4, 5)}, NEIGHBOURS, PairConfig(negatives=3, max_groups_per_query=5))
    assert groups.shape == (5, 5)
    for row in groups:
        negs = set(row[2:].tolist())
        assert {6, 7} <= negs and negs - {6, 7} <= {8, 9}


def test_label_relevance_excludes_same_label_negatives():
    labels = ["a", "a", "a", "b", "b", "a", "b", "a", "b", "b"]
    groups, _ = mine_groups({0: rel(5, 7)}, NEIGHBOURS, CFG, labels)
    assert groups.shape == (2, 4)  # one group per positive (5 and 7), each with its negatives
    for row in groups:
        assert all(labels[j] != "a" for j in row[2:])
    unlabelled, _ = mine_groups({0: rel(5, 7)}, NEIGHBOURS, CFG)
    assert any(labels[j] == "a" for row in unlabelled for j in row[2:])  # the labels are what kept them out


def test_mining_is_deterministic():
    relevant = {0: {5: 2, 7: 1, 1: 2, 3: 1}}
    first, again = mine_groups(relevant, NEIGHBOURS, CFG), mine_groups(relevant, NEIGHBOURS, CFG)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_the_strongest_pairs_become_positives():
    """Positives are the query's most co-engaged neighbours, whatever their neighbour rank."""
    relevant = {0: {1: 1, 5: 1, 2: 3, 7: 6, 9: 50}}  # 9 is strongest but not a neighbour
    groups, strength = mine_groups(relevant, NEIGHBOURS, CFG)
    assert groups[:, 1].tolist() == [7, 2]
    assert strength.tolist() == [6, 3]
    equal = {0: {1: 1, 5: 1, 2: 1, 7: 1}}
    picks = [tuple(sorted(mine_groups(equal, NEIGHBOURS, PairConfig(negatives=2, max_groups_per_query=2, seed=s))[0][:, 1]))
             for s in range(8)]
    assert all(len(set(p)) == 2 and set(p) <= {1, 2, 5, 7} for p in picks)
    assert len(set(picks)) > 1  # equal strengths: drawn at random, not in neighbour order


def _store_groups(home, rows: list[tuple[str, str, str, int]]) -> list[str]:
    """Write training_pairs rows (split, query, positive, strength) with two fixed negatives;
    return the catalog ids they use."""
    frame = pl.DataFrame([{"split": s, "query": q, "positive": p, "negatives": ["n1", "n2"], "strength": n}
                          for s, q, p, n in rows], schema=GROUP_SCHEMA)
    write_table(home, "training_pairs", frame)
    return ["n1", "n2"] + sorted({x for _, q, p, _ in rows for x in (q, p)})


def test_budget_keeps_the_strongest_groups(home):
    rows = [("train", f"q{i}", f"p{i}", n) for i, n in enumerate([1, 5, 1, 3, 1, 1, 9, 1])]
    rows += [("val", f"v{i}", f"w{i}", n) for i, n in enumerate([2, 1, 1, 2])]
    ids = _store_groups(home, rows)
    pos = {k: i for i, k in enumerate(ids)}
    train, val = budget_groups(home, ids, max_train=3, max_val=2, seed=0)
    assert train[:, 0].tolist() == [pos["q1"], pos["q3"], pos["q6"]]  # strengths 5, 3, 9, in stored order
    assert val[:, 0].tolist() == [pos["v0"], pos["v3"]]
    ties = [sorted(budget_groups(home, ids, max_train=4, max_val=9, seed=s)[0][:, 0].tolist()) for s in range(8)]
    assert all({pos["q1"], pos["q3"], pos["q6"]} < set(t) for t in ties)  # the three strongest always
    assert len({tuple(t) for t in ties}) > 1  # the fourth drawn among the strength-1 ties, by seed
    full, _ = budget_groups(home, ids, max_train=100, max_val=100, seed=0)
    assert len(full) == 8  # within budget: every group
    known = [i for i in ids if i != "q6"]  # q6 (strength 9) left the catalog: its group is dropped
    pos = {k: i for i, k in enumerate(known)}
    train, _ = budget_groups(home, known, max_train=2, max_val=2, seed=0)
    assert train[:, 0].tolist() == [pos["q1"], pos["q3"]]  # strengths stay with their own rows


def test_the_training_set_says_which_task_each_val_group_is_whatever_the_history_length(home):
    ids = _store_groups(home, [("train", "q0", "p0", 1), ("val", "q1", "p1", 1)])
    write_table(home, "user_histories", pl.DataFrame([
        {"user_id": "short", "split": "val", "history": ["q0"], "targets": ["p1"], "gains": [1]},  # one image
        {"user_id": "long", "split": "train", "history": ["q0", "q1"], "targets": ["p0"], "gains": [1]},
    ], schema=USER_SCHEMA))
    write_table(home, "user_pairs", pl.DataFrame([
        {"split": "val", "query": "short", "positive": "p1", "negatives": ["n1", "n2"], "strength": 1},
        {"split": "train", "query": "long", "positive": "p0", "negatives": ["n1", "n2"], "strength": 1},
    ], schema=GROUP_SCHEMA))
    budgets = {"training_pairs": (10, 10), "user_pairs": (10, 10)}
    train, val, queries, val_is_user = training_set(home, ids, budgets, seed=0, history=3)
    assert len(train) == 2 and len(val) == 2
    pos = {k: i for i, k in enumerate(ids)}
    assert queries[val[:, 0]].tolist() == [[-1, -1, pos["q1"]], [-1, -1, pos["q0"]]]  # the same shape...
    assert val_is_user.tolist() == [False, True]  # ...but the second is a user


def test_a_users_groups_never_use_the_history_and_index_the_user_not_a_row():
    """For a user, column 0 is the user's index (here 0, which is also a catalog row that
    must stay usable) and the history rows are never positives or negatives."""
    candidates = np.array([[0, 1, 5, 2, 3, 7, 4, 6]])
    history = {0: {1, 2}}
    groups, _ = mine_groups({0: rel(5, 1)}, candidates, CFG, n_items=10, exclude=history)
    assert set(groups[:, 0]) == {0} and set(groups[:, 1]) == {5}  # 1 is a target but in the history
    assert all(not set(row[2:]) & {1, 2, 5} for row in groups)
    assert any(0 in row[2:] for row in mine_groups({0: rel(5)}, candidates, PairConfig(negatives=5, max_groups_per_query=1),
                                                      n_items=10, exclude=history)[0])  # row 0 is a fine negative


def test_labels_only_training_groups_never_hold_a_held_out_image(home, monkeypatch):
    """Without engagement, relevance is a shared label and images are split: the test images
    are the evaluation's queries, so no train or val group may use one as positive or negative."""
    import faiss

    import assets.reranker.pairs as pairs
    from assets.ingestion.coengagement import image_splits

    rng = np.random.default_rng(0)
    n = 200
    labels = [f"l{i % 4}" for i in range(n)]
    emb = rng.normal(size=(n, 8)).astype(np.float32) + 2.0 * np.eye(8, dtype=np.float32)[[i % 4 for i in range(n)]]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    frame = pl.DataFrame({"image_id": [f"img{i:03d}" for i in range(n)], "label": labels})
    index = faiss.IndexFlatIP(8)
    index.add(emb)
    monkeypatch.setattr(pairs, "aligned_catalog", lambda home: (frame, emb))
    monkeypatch.setattr(pairs, "load_index", lambda home, mmap: (index, frame["image_id"].to_numpy(), {}))
    out = pairs.build_pairs(home, PairConfig(negatives=3, neighbours=20))
    assert out["stats"]["source"] == "labels" and out["stats"]["train_groups"] > 0 and out["stats"]["val_groups"] > 0
    test_ids = set(frame["image_id"].filter(image_splits(frame["image_id"].to_list()) == "test").to_list())
    assert test_ids and out["evaluation_queries"].height > 0
    groups = out["training_pairs"]
    used = set(groups["query"]) | set(groups["positive"]) | {j for negs in groups["negatives"] for j in negs}
    assert not used & test_ids


def test_a_user_whose_history_the_catalog_lost_changes_no_other_users_groups(home, monkeypatch):
    """A user none of whose history images the catalog holds has no anchor, and so a list of
    popular images only (none here): it must not cut the other users' candidate lists."""
    import faiss

    import assets.reranker.pairs as pairs

    rng = np.random.default_rng(1)
    n, d = 120, 8
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"img{i:03d}" for i in range(n)]
    frame = pl.DataFrame({"image_id": ids, "label": [None] * n}, schema={"image_id": pl.Utf8, "label": pl.Utf8})
    index = faiss.IndexFlatIP(d)
    index.add(emb)
    users = []
    for u in range(40):
        near = np.argsort(-(emb @ emb[u]))[:8].tolist()  # history u and its neighbours; targets nearby
        users.append({"user_id": f"u{u}", "split": ("train", "val")[u % 2], "history": [ids[j] for j in near[:4]],
                      "targets": [ids[j] for j in near[4:6]], "gains": [1, 1]})
    ghost = {"user_id": "ghost", "split": "train", "history": ["gone1", "gone2"], "targets": [ids[0]], "gains": [1]}
    monkeypatch.setattr(pairs, "aligned_catalog", lambda home: (frame, emb))
    monkeypatch.setattr(pairs, "load_index", lambda home, mmap: (index, np.array(ids, dtype=object), {}))
    config = PairConfig(negatives=2, neighbours=10)
    out = {}
    for name, rows in (("without", users), ("with", users + [ghost])):
        monkeypatch.setattr(pairs, "user_histories", lambda home, config, rows=rows: pl.DataFrame(rows, schema=USER_SCHEMA))
        out[name] = pairs.build_user_pairs(home, pair_config=config)
    assert out["without"]["stats"]["train_groups"] > 0
    assert out["with"]["user_pairs"].equals(out["without"]["user_pairs"])
    assert "ghost" not in out["with"]["user_histories"]["user_id"].to_list()
