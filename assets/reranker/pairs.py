"""Training groups for the rerankers and held-out relevance for the evaluation. No Dagster.

Relevance comes from co-engagement per split (`ingestion.coengagement`), or, without
engagement, from labels over the image split (`image_splits`): the `test` images are the
evaluation queries, never trained on by the encoder.

Groups are int32 rows `[query, positive, neg_1 … neg_n]` of row indices into the aligned
catalog (`reranker.aligned`), all drawn from the query's candidates as a reranker will see
them (`retrieval.candidates`: index neighbours merged with popular images, at the share
chosen here on validation recall): a co-engaged candidate as the positive, and hard
negatives among the candidates that are not co-engaged with it (and, with labels only, not
of the same label).
Each group carries its strength, the number of users behind the (query, positive) pair, and
the query's strongest pairs become its positives: one shared user is weak evidence (a user
with 100 clicks co-engages ~5,000 pairs), and a training budget is best spent where evidence
is strong. `budget_groups` keeps the strongest stored groups within a budget; the reranker
assets and the benchmarks both call it, so a benchmark scores the exact groups the
pipeline's models were trained and selected on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from assets.ingestion.coengagement import (
    SPLITS,
    SplitConfig,
    coengagement,
    image_splits,
    strongest_first,
)
from assets.reranker.aligned import aligned_catalog, rows_of
from assets.reranker.histories import HistoryConfig, history_rows, stored_histories, user_histories
from assets.retrieval.candidates import (
    CandidateConfig,
    Queries,
    choose_share,
    frame_rows,
    index_neighbours,
    merge_sources,
    popular_rows,
)
from assets.retrieval.index_store import load_index
from assets.store.files import Home
from assets.store.lake import GROUP_SCHEMA, QUERY_SCHEMA, has_table, read_table
from models.scoring import CANDIDATES


@dataclass(frozen=True)
class PairConfig:
    negatives: int = 7  # hard negatives per group, drawn from the neighbours
    max_groups_per_query: int = 4  # strongest positives kept per query image
    neighbours: int = CANDIDATES  # candidates groups are drawn from (= the K a reranker sees)
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)


def relevance_counts(pairs: pl.DataFrame, image_ids: list[str]) -> dict[int, dict[int, int]]:
    """{query row: {relevant row: users who co-engaged both}} from co-engagement pairs, in
    catalog row indices."""
    index = {k: i for i, k in enumerate(image_ids)}
    rel: dict[int, dict[int, int]] = {}
    for a, b, n in zip(pairs["a"], pairs["b"], pairs["n"], strict=True):
        if a in index and b in index:
            rel.setdefault(index[a], {})[index[b]] = int(n)
    return rel


def label_relevance(labels: list[str | None], queries: np.ndarray) -> dict[int, set[int]]:
    """{query row: rows sharing its label}: relevance when there is no engagement."""
    by_label: dict[str, set[int]] = {}
    for i, lab in enumerate(labels):
        if lab is not None:
            by_label.setdefault(lab, set()).add(i)
    return {int(q): by_label[labels[q]] - {int(q)} for q in queries if labels[q] is not None}


def mine_groups(relevant: dict[int, dict[int, int]], neighbours: np.ndarray, config: PairConfig = PairConfig(),
                labels: list[str | None] | None = None, n_items: int | None = None,
                exclude: dict[int, set[int]] | None = None,
                held_out: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """(groups `[query, positive, n hard negatives]` (G, 2+n) int32, strength (G,) int32).

    `relevant[q]` maps each row relevant to q to the strength of that pair (co-engagement:
    the users behind it; labels: 1). `neighbours[q]` are the query's index neighbours (row
    ids, -1 for none), nearest first: the same candidate list a reranker sees at serving time.
    The positives are the query's `max_groups_per_query` strongest relevant neighbours (ties
    in random order); the negatives are non-relevant neighbours (and, when `labels` is given,
    not of the query's label), drawn at random and kept in neighbour order. When engagement is
    so dense that fewer than n neighbours are non-relevant, random non-relevant catalog rows
    fill the group. Queries without a relevant neighbour, or without n negatives at all, give
    none. A group's strength is its (query, positive) pair's.

    A query is a catalog row (related images) or a user index (for a user, with `exclude[q]`
    the user's history rows and `n_items` the catalog size): the rows in `exclude[q]`
    (default: q itself) are never positives or negatives, nor are the `held_out` rows of any
    query (images kept for the evaluation).

    Both come from the neighbourhood on purpose. With a positive from anywhere and the nearest
    non-relevant neighbours as negatives, "farther from the query" alone separated them: the
    positive ranked last by cosine in every group, and a reranker learned that shortcut (0.9
    validation NDCG@10, no gain on held-out candidates).
    """
    rng = np.random.default_rng(config.seed)
    n_items = len(neighbours) if n_items is None else n_items
    groups, strength = [], []
    for q in sorted(relevant):
        skip = {q} if exclude is None else exclude[q]
        near = [int(j) for j in neighbours[q] if j >= 0 and j not in skip and j not in held_out]
        positives = [j for j in near if j in relevant[q]]
        negatives = [j for j in near if j not in relevant[q] and (labels is None or labels[j] != labels[q])]
        if not positives:
            continue
        if len(negatives) < config.negatives:  # dense engagement: top up from the whole catalog
            negatives += _far_negatives(q, skip | set(relevant[q]) | set(near), config.negatives - len(negatives),
                                        n_items, labels, rng, held_out)
            if len(negatives) < config.negatives:
                continue
        for p in strongest_first([relevant[q][j] for j in positives], rng)[: config.max_groups_per_query]:
            chosen = np.sort(rng.choice(len(negatives), size=config.negatives, replace=False))
            groups.append([q, positives[p], *(negatives[i] for i in chosen)])
            strength.append(relevant[q][positives[p]])
    return (np.asarray(groups, dtype=np.int32).reshape(-1, 2 + config.negatives),
            np.asarray(strength, dtype=np.int32))


def _far_negatives(q: int, taken: set[int], n: int, n_items: int, labels: list[str | None] | None,
                   rng: np.random.Generator, held_out: frozenset[int] = frozenset()) -> list[int]:
    """Up to n random catalog rows not in `taken` (the query's excluded, relevant and near
    rows) nor `held_out`, nor (with labels) of q's label."""
    def ok(j: int) -> bool:
        return j not in taken and j not in held_out and (labels is None or labels[j] != labels[q])

    out: list[int] = []
    for j in rng.integers(n_items, size=50 * n + 100):  # bounded tries: a saturated catalog gives up
        if ok(int(j)) and int(j) not in out:
            out.append(int(j))
            if len(out) == n:
                break
    return out


def split_relevance(home: Home, frame: pl.DataFrame,
                    config: PairConfig = PairConfig()) -> tuple[dict[str, dict[int, dict[int, int]]], str]:
    """({split: {query row: {relevant row: strength}}}, source) over the aligned catalog `frame`.

    With engagement: co-engagement within each user split. Labels only: same-label images,
    with queries of each split from `image_splits`, so the `test` queries are images the
    encoder never trained on."""
    ids, labels = frame["image_id"].to_list(), frame["label"].to_list()
    per_split = coengagement(home, config.split)
    if per_split is not None and per_split["train"].height > 0:
        return {s: relevance_counts(per_split[s], ids) for s in SPLITS}, "co-engagement"
    if all(lab is None for lab in labels):
        raise ValueError("no engagement and no labels: nothing says which images are relevant to each other")
    splits = image_splits(ids, config.split)
    return ({s: {q: dict.fromkeys(r, 1) for q, r in label_relevance(labels, np.flatnonzero(splits == s)).items()}
             for s in SPLITS}, "labels")


def build_pairs(home: Home, config: PairConfig = PairConfig()) -> dict:
    """{"training_pairs": train and val groups (GROUP_SCHEMA), "evaluation_queries": held-out
    queries (QUERY_SCHEMA), "mix": `choose_share`'s popular share and recalls, "stats": counts}."""
    frame, emb = aligned_catalog(home)
    ids = frame["image_id"].to_list()
    rel, source = split_relevance(home, frame, config)
    index, index_ids, _ = load_index(home, mmap=True)
    everyone = Queries.images(emb, range(len(ids)))
    near = index_neighbours(index, everyone.anchors, 2 * config.neighbours, everyone.exclude,
                            frame_rows(index_ids, frame))
    popular = popular_rows(home, frame)
    val = sorted(rel["val"])
    mix = choose_share(emb, [everyone.anchors[q] for q in val], [near[q] for q in val], popular,
                       [everyone.exclude[q] for q in val], [set(rel["val"][q]) for q in val],
                       CandidateConfig(k=config.neighbours))
    neighbours = merge_sources(emb, everyone.anchors, near, popular, config.neighbours, mix["share"],
                               everyone.exclude).rows
    mine_labels = frame["label"].to_list() if source == "labels" else None
    # labels only: images are split, and the test images are the evaluation's queries; the
    # train and val groups must not hold them, as positive or negative
    held_out = frozenset(np.flatnonzero(image_splits(ids, config.split) == "test").tolist()) \
        if source == "labels" else frozenset()
    rows, counts = [], {}
    for split in ("train", "val"):
        groups, strength = mine_groups(rel[split], neighbours, config, mine_labels, held_out=held_out)
        counts[f"{split}_groups"] = len(groups)
        rows += [{"split": split, "query": ids[g[0]], "positive": ids[g[1]], "negatives": [ids[j] for j in g[2:]],
                  "strength": int(n)} for g, n in zip(groups, strength, strict=True)]
    queries = [{"query": ids[q], "relevant": sorted(ids[j] for j in r), "source": source}
               for q, r in sorted(rel["test"].items()) if r]
    stats = {**counts, "eval_queries": len(queries), "source": source,
             "train_relevance_pairs": sum(len(r) for r in rel["train"].values()), "popular_share": mix["share"]}
    return {"training_pairs": pl.DataFrame(rows, schema=GROUP_SCHEMA),
            "evaluation_queries": pl.DataFrame(queries, schema=QUERY_SCHEMA),
            "mix": mix, "stats": stats}


def load_groups(home: Home, ids: list[str], split: str, table: str = "training_pairs",
                queries: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stored groups of `split` in `table` as ((G, 2+n) int rows, strength (G,)): column 0
    indexes `queries` (default: the catalog `ids`; user ids for `user_pairs`), the others
    the aligned catalog. Groups naming an image the catalog no longer holds are left out."""
    groups = read_table(home, table).filter(pl.col("split") == split)
    width = 2 + (len(groups["negatives"][0]) if groups.height else 0)
    strength = groups["strength"].to_numpy().astype(np.int64)
    pos = {k: i for i, k in enumerate(ids)}
    qpos = pos if queries is None else {k: i for i, k in enumerate(queries)}
    out, kept = [], []
    for i, (q, p, negs) in enumerate(zip(groups["query"], groups["positive"], groups["negatives"], strict=True)):
        if q in qpos and p in pos and all(n in pos for n in negs):
            out.append([qpos[q], pos[p], *[pos[n] for n in negs]])
            kept.append(i)
    return np.asarray(out, dtype=np.int64).reshape(-1, width), strength[kept]


def budget_groups(home: Home, ids: list[str], max_train: int, max_val: int, seed: int,
                  table: str = "training_pairs", queries: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) groups a reranker trains on: the strongest stored groups of `table` within
    budget, equal strengths in a seeded random order, returned in stored order."""
    rng = np.random.default_rng(seed)
    out = []
    for split, cap in (("train", max_train), ("val", max_val)):
        groups, strength = load_groups(home, ids, split, table, queries)
        if len(groups) > cap:
            groups = groups[np.sort(strongest_first(strength, rng)[:cap])]
        out.append(groups)
    return out[0], out[1]


def build_user_pairs(home: Home, config: HistoryConfig = HistoryConfig(),
                     pair_config: PairConfig = PairConfig()) -> dict:
    """The user task's tables: {"user_histories" (USER_SCHEMA), "user_pairs": train and val
    groups (GROUP_SCHEMA, query = user_id), "mix": the users' popular share, "stats"}.

    A user's candidates are the index neighbours of their `recent` latest history images
    merged with popular images (the share chosen on val users' recall); the positive is a
    target among them (saves first: the gain is the group's strength), the negatives the
    candidates that are not targets."""
    frame, emb = aligned_catalog(home)
    pos = rows_of(frame)
    users = user_histories(home, config)
    hist = history_rows(users, pos, config.length)
    # a user none of whose history images the catalog holds has nothing to anchor candidates:
    # left out, or their popular-only list would cut every user's list to its length
    anchored = (hist >= 0).any(axis=1)
    users, hist = users.filter(pl.Series(anchored, dtype=pl.Boolean)), hist[anchored]
    if users.height == 0:  # no engagement log (labels only): there is no user task
        return {"user_histories": users, "user_pairs": pl.DataFrame(schema=GROUP_SCHEMA), "mix": None,
                "stats": {"train_groups": 0, "val_groups": 0, "users": 0, "test_users": 0, "popular_share": None}}
    queries = Queries.histories(emb, [h[h >= 0] for h in hist], config.recent)
    index, index_ids, _ = load_index(home, mmap=True)
    near = index_neighbours(index, queries.anchors, 2 * pair_config.neighbours, queries.exclude,
                            frame_rows(index_ids, frame))
    popular = popular_rows(home, frame)
    splits = users["split"].to_list()
    gains = [{pos[t]: int(g) for t, g in zip(ts, gs, strict=True) if t in pos}
             for ts, gs in zip(users["targets"].to_list(), users["gains"].to_list(), strict=True)]
    val = [i for i, s in enumerate(splits) if s == "val"]
    mix = choose_share(emb, [queries.anchors[i] for i in val], [near[i] for i in val], popular,
                       [queries.exclude[i] for i in val], [set(gains[i]) for i in val],
                       CandidateConfig(k=pair_config.neighbours))
    cands = merge_sources(emb, queries.anchors, near, popular, pair_config.neighbours, mix["share"], queries.exclude)
    ids, user_ids = frame["image_id"].to_list(), users["user_id"].to_list()
    rows, counts = [], {}
    for split in ("train", "val"):
        relevant = {i: gains[i] for i, s in enumerate(splits) if s == split and gains[i]}
        groups, strength = mine_groups(relevant, cands.rows, pair_config, n_items=len(ids),
                                       exclude=dict(enumerate(queries.exclude)))
        counts[f"{split}_groups"] = len(groups)
        rows += [{"split": split, "query": user_ids[g[0]], "positive": ids[g[1]], "negatives": [ids[j] for j in g[2:]],
                  "strength": int(n)} for g, n in zip(groups, strength, strict=True)]
    stats = {**counts, "users": users.height, "test_users": splits.count("test"), "popular_share": mix["share"]}
    return {"user_histories": users, "user_pairs": pl.DataFrame(rows, schema=GROUP_SCHEMA), "mix": mix, "stats": stats}


def training_set(home: Home, ids: list[str], budgets: dict[str, tuple[int, int]], seed: int,
                 history: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train groups, val groups, queries, val_is_user) of both tasks for one model: `budgets`
    maps "training_pairs" and "user_pairs" to their (max train, max val) groups. Column 0 of a
    group indexes `queries` (Q, history): a related-images query is its one image, a user
    the latest `history` images of their history (oldest first); both left padded with -1.
    `val_is_user` says which task each val group belongs to (a user's history may be one
    image long, so the query's length does not tell)."""
    out = {"train": [], "val": []}
    val_is_user = []
    queries: list[np.ndarray] = []
    for table, (max_train, max_val) in budgets.items():
        if not has_table(home, table):
            continue
        if table == "user_pairs":
            users = stored_histories(home)
            keys = users["user_id"].to_list()
            rows = history_rows(users, {k: i for i, k in enumerate(ids)}, history)
        else:
            keys, rows = ids, None
        train, val = budget_groups(home, ids, max_train, max_val, seed, table, keys)
        used = np.unique(np.concatenate([train[:, 0], val[:, 0]])) if len(train) + len(val) else np.zeros(0, np.int64)
        renumber = {int(q): len(queries) + i for i, q in enumerate(used)}
        for q in used:
            row = np.full(history, -1, dtype=np.int64)
            if rows is None:
                row[-1] = q
            else:
                row[:] = rows[q]
            queries.append(row)
        for split, groups in (("train", train), ("val", val)):
            if len(groups):
                groups = groups.copy()
                groups[:, 0] = [renumber[int(q)] for q in groups[:, 0]]
                out[split].append(groups)
                if split == "val":
                    val_is_user.append(np.full(len(groups), table == "user_pairs"))
    if not out["train"] or not out["val"]:
        raise ValueError("no training groups: materialise training_pairs (and user_histories) first")
    widths = {g.shape[1] for g in out["train"] + out["val"]}
    if len(widths) > 1:
        raise ValueError(f"the tasks' groups differ in size ({sorted(widths)}): mine both with the same negatives")
    return np.concatenate(out["train"]), np.concatenate(out["val"]), np.stack(queries), np.concatenate(val_is_user)
