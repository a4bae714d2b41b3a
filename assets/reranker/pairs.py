"""Training groups for the rerankers and held-out relevance for the evaluation. No Dagster.

Relevance comes from co-engagement per split (`ingestion.coengagement`), or, without
engagement, from labels over the image split (`image_splits`): the `test` images are the
evaluation queries, never trained on by the encoder.

Groups are int32 rows `[query, positive, neg_1 … neg_n]` of row indices into the aligned
catalog (`reranker.aligned`), all drawn from the query's index neighbours (the candidates a
reranker will see): a co-engaged neighbour as the positive, and hard negatives among the
neighbours that are not co-engaged with it (and, with labels only, not of the same label).
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
from assets.reranker.aligned import aligned_catalog
from assets.retrieval.index_store import load_index
from assets.store.files import Home
from assets.store.lake import GROUP_SCHEMA, QUERY_SCHEMA, read_table
from index.search import search
from models.scoring import CANDIDATES


@dataclass(frozen=True)
class PairConfig:
    negatives: int = 7  # hard negatives per group, drawn from the neighbours
    max_groups_per_query: int = 4  # strongest positives kept per query image
    neighbours: int = CANDIDATES  # index neighbours groups are drawn from (= the candidates a reranker sees)
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
                labels: list[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
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

    Both come from the neighbourhood on purpose. With a positive from anywhere and the nearest
    non-relevant neighbours as negatives, "farther from the query" alone separated them: the
    positive ranked last by cosine in every group, and a reranker learned that shortcut (0.9
    validation NDCG@10, no gain on held-out candidates).
    """
    rng = np.random.default_rng(config.seed)
    groups, strength = [], []
    for q in sorted(relevant):
        near = [int(j) for j in neighbours[q] if j >= 0 and j != q]
        positives = [j for j in near if j in relevant[q]]
        negatives = [j for j in near if j not in relevant[q] and (labels is None or labels[j] != labels[q])]
        if not positives:
            continue
        if len(negatives) < config.negatives:  # dense engagement: top up from the whole catalog
            negatives += _far_negatives(q, set(relevant[q]), set(near), config.negatives - len(negatives),
                                        len(neighbours), labels, rng)
            if len(negatives) < config.negatives:
                continue
        for p in strongest_first([relevant[q][j] for j in positives], rng)[: config.max_groups_per_query]:
            chosen = np.sort(rng.choice(len(negatives), size=config.negatives, replace=False))
            groups.append([q, positives[p], *(negatives[i] for i in chosen)])
            strength.append(relevant[q][positives[p]])
    return (np.asarray(groups, dtype=np.int32).reshape(-1, 2 + config.negatives),
            np.asarray(strength, dtype=np.int32))


def _far_negatives(q: int, relevant: set[int], near: set[int], n: int, n_items: int,
                   labels: list[str | None] | None, rng: np.random.Generator) -> list[int]:
    """Up to n random catalog rows that are not q, relevant, near, or (with labels) of q's label."""
    def ok(j: int) -> bool:
        return j != q and j not in relevant and j not in near and (labels is None or labels[j] != labels[q])

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


def build_pairs(home: Home, config: PairConfig = PairConfig()) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(train and val groups in GROUP_SCHEMA, evaluation queries in QUERY_SCHEMA, stats)."""
    frame, emb = aligned_catalog(home)
    ids = frame["image_id"].to_list()
    index, _, _ = load_index(home, mmap=True)
    _, neighbours = search(index, emb, config.neighbours + 1)
    rel, source = split_relevance(home, frame, config)
    mine_labels = frame["label"].to_list() if source == "labels" else None
    rows, counts = [], {}
    for split in ("train", "val"):
        groups, strength = mine_groups(rel[split], neighbours, config, mine_labels)
        counts[f"{split}_groups"] = len(groups)
        rows += [{"split": split, "query": ids[g[0]], "positive": ids[g[1]], "negatives": [ids[j] for j in g[2:]],
                  "strength": int(n)} for g, n in zip(groups, strength, strict=True)]
    queries = [{"query": ids[q], "relevant": sorted(ids[j] for j in r), "source": source}
               for q, r in sorted(rel["test"].items()) if r]
    stats = {**counts, "eval_queries": len(queries), "source": source,
             "train_relevance_pairs": sum(len(r) for r in rel["train"].values())}
    return pl.DataFrame(rows, schema=GROUP_SCHEMA), pl.DataFrame(queries, schema=QUERY_SCHEMA), stats


def load_groups(home: Home, ids: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Stored groups of `split` as ((G, 2+n) int rows into the aligned catalog, strength (G,)).
    Groups naming an image the catalog no longer holds are left out."""
    groups = read_table(home, "training_pairs").filter(pl.col("split") == split)
    width = 2 + (len(groups["negatives"][0]) if groups.height else 0)
    strength = groups["strength"].to_numpy().astype(np.int64)
    pos = {k: i for i, k in enumerate(ids)}
    out, kept = [], []
    for i, (q, p, negs) in enumerate(zip(groups["query"], groups["positive"], groups["negatives"], strict=True)):
        if q in pos and p in pos and all(n in pos for n in negs):
            out.append([pos[q], pos[p], *[pos[n] for n in negs]])
            kept.append(i)
    return np.asarray(out, dtype=np.int64).reshape(-1, width), strength[kept]


def budget_groups(home: Home, ids: list[str], max_train: int, max_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) groups a reranker trains on: the strongest stored groups within budget,
    equal strengths in a seeded random order, returned in stored order."""
    rng = np.random.default_rng(seed)
    out = []
    for split, cap in (("train", max_train), ("val", max_val)):
        groups, strength = load_groups(home, ids, split)
        if len(groups) > cap:
            groups = groups[np.sort(strongest_first(strength, rng)[:cap])]
        out.append(groups)
    return out[0], out[1]
