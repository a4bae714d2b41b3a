"""Training groups and evaluation relevance from engagement, counted in DuckDB. No Dagster.

Split (by user AND time, so no future engagement leaks into training):
- users are bucketed by md5(user_id): `val_users` and `test_users` fractions, the rest train;
- the cut-off T is the `time_quantile` of all event timestamps;
- train pairs come from train users' events before T, validation pairs from val users'
  events before T, and evaluation relevance from test users' events at or after T.

Co-engagement: two distinct images engaged by the same user within a split; a pair's weight
is the number of such users. The self-join runs in DuckDB over the Parquet log with a memory
limit, so it spills to disk instead of failing on logs larger than memory.

Groups are int32 rows `[query, positive, neg_1 … neg_n]` of row indices into the catalog
order (`image_ids`), all drawn from the query's index neighbours (the candidates a reranker
will see): a co-engaged neighbour as the positive, and hard negatives among the neighbours
that are not co-engaged with it (and, with labels only, not of the same label). Each group
carries its strength, the number of users behind the (query, positive) pair, and the query's
strongest pairs become its positives: one shared user is weak evidence (a user with 100
clicks co-engages ~5,000 pairs), and a training budget is best spent where evidence is strong.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PairConfig:
    val_users: float = 0.1  # fraction of users whose pre-cut-off events validate
    test_users: float = 0.2  # fraction of users whose post-cut-off events evaluate
    time_quantile: float = 0.75  # cut-off T as a quantile of event time
    min_count: int = 1  # users needed for a co-engagement pair to count
    negatives: int = 7  # hard negatives per group, drawn from the neighbours
    max_groups_per_query: int = 4  # strongest positives kept per query image
    neighbours: int = 50  # index neighbours groups are drawn from (= the candidates' k)
    seed: int = 0
    memory_limit: str = "2GB"  # DuckDB spills past this


def _connect(memory_limit: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.sql(f"SET memory_limit='{memory_limit}'")
    return con


def _split_events(events_path: str, config: PairConfig) -> duckdb.DuckDBPyConnection | None:
    """A connection with view `split_events(user_id, image_id, split)`; None for an empty log."""
    con = _connect(config.memory_limit)
    con.sql(f"CREATE VIEW events AS SELECT * FROM read_parquet('{events_path}')")
    if con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 0:
        return None
    cutoff = con.execute(f"SELECT quantile_disc(ts, {config.time_quantile}) FROM events").fetchall()[0][0]
    bucket = "CAST(('0x' || substr(md5(user_id), 1, 8)) AS BIGINT) % 1000"
    test_hi, val_hi = int(config.test_users * 1000), int((config.test_users + config.val_users) * 1000)
    before, after = f"ts < TIMESTAMPTZ '{cutoff.isoformat()}'", f"ts >= TIMESTAMPTZ '{cutoff.isoformat()}'"
    con.sql(f"""CREATE VIEW split_events AS SELECT user_id, image_id,
        CASE WHEN {bucket} < {test_hi} THEN (CASE WHEN {after} THEN 'test' END)
             WHEN {bucket} < {val_hi} THEN (CASE WHEN {before} THEN 'val' END)
             ELSE (CASE WHEN {before} THEN 'train' END) END AS split
        FROM events""")
    return con


def coengagement(events_path: str, config: PairConfig = PairConfig()) -> dict[str, pl.DataFrame]:
    """Co-engagement pairs (a, b, n) per split, from the Parquet event log at `events_path`."""
    con = _split_events(events_path, config)
    if con is None:
        return dict.fromkeys(SPLITS, pl.DataFrame(schema={"a": pl.Utf8, "b": pl.Utf8, "n": pl.Int64}))
    out = {}
    for split in SPLITS:
        out[split] = con.sql(f"""
            WITH e AS (SELECT DISTINCT user_id, image_id FROM split_events WHERE split = '{split}')
            SELECT x.image_id AS a, y.image_id AS b, count(*) AS n
            FROM e x JOIN e y ON x.user_id = y.user_id AND x.image_id <> y.image_id
            GROUP BY 1, 2 HAVING count(*) >= {config.min_count}
            ORDER BY 1, 2""").pl()
    return out


def popularity(events_path: str, config: PairConfig = PairConfig()) -> pl.DataFrame:
    """(image_id, n) engagement counts over the train split only (no test-period leakage)."""
    con = _split_events(events_path, config)
    if con is None:
        return pl.DataFrame(schema={"image_id": pl.Utf8, "n": pl.Int64})
    return con.sql("""SELECT image_id, count(*) AS n FROM split_events WHERE split = 'train'
        GROUP BY 1 ORDER BY n DESC, image_id""").pl()


def strongest_first(strength, rng: np.random.Generator) -> np.ndarray:
    """Indices ordering `strength` from strongest down, equal strengths in an order drawn from
    `rng`: how groups, budgets and the encoder's pairs all spend a budget on evidence."""
    return np.lexsort((rng.random(len(strength)), -np.asarray(strength)))


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
