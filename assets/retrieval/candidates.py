"""Candidates from more than one source: what a reranker sees for each query. No Dagster here.

A query is a set of anchor images: the query image ("related images"), or a user's most
recent history images ("for a user"). Two sources, each a ranked list of catalog rows:
- `index`: the anchors' nearest neighbours in the FAISS index, their union ordered by the
  best cosine similarity to any anchor;
- `popular`: the most engaged images of the train split.

`merge_sources` takes the top `share * K` popular images and fills the rest of the K with
index neighbours, without duplicates or excluded images (the query itself, a user's
history), then orders the merged list by best cosine to the anchors: that order is the
`retrieval` system, and the reranker reorders it. A reranker can only reach what its
candidates hold, so the share is chosen per catalog and task on validation relevance
(`choose_share`): the share with the highest recall@K over the `val` split's queries. A
catalog whose engagement follows popularity more than looks draws more from `popular`; one
where looks decide keeps the index's neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from assets.ingestion.coengagement import popularity
from assets.retrieval.index_store import load_index
from assets.store.files import Home
from assets.store.lake import CANDIDATE_MIX_SCHEMA, has_table, read_table, write_table
from index.search import search
from models.scoring import CANDIDATES

SOURCES = ("index", "popular")
TASKS = ("images", "users")  # "related images" and "for a user": each has its own chosen share


@dataclass(frozen=True)
class CandidateConfig:
    k: int = CANDIDATES  # candidates per query, all sources together
    shares: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)  # popular shares `choose_share` tries


@dataclass
class Candidates:
    """Each query's K candidates, best cosine first: catalog rows, scores and sources."""

    rows: np.ndarray  # (Q, K) int64
    scores: np.ndarray  # (Q, K) float32, best cosine similarity to the query's anchors
    source: np.ndarray  # (Q, K) "index" or "popular": where each candidate came from


def index_neighbours(index, anchors: list[np.ndarray], n: int, exclude: list[set[int]],
                     rows: np.ndarray | None = None) -> list[list[int]]:
    """Per query, up to `n` catalog rows nearest to any of its anchor vectors (A_i, d), best
    cosine first, `exclude`d rows left out. `rows` (``frame_rows``) maps the index's rows to
    the catalog's when they differ; otherwise they are the same."""
    sizes = [len(a) for a in anchors]
    if not sum(sizes):
        return [[] for _ in anchors]
    scores, found = search(index, np.ascontiguousarray(np.concatenate(anchors), dtype=np.float32), n + max(map(len, exclude), default=0))
    if rows is not None:  # into catalog rows before anything is excluded; -1: not in the catalog
        found = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
    out, start = [], 0
    for size, skip in zip(sizes, exclude, strict=True):
        best: dict[int, float] = {}
        for srow, frow in zip(scores[start: start + size], found[start: start + size], strict=True):
            for s, j in zip(srow, frow, strict=True):
                if j >= 0 and int(j) not in skip and s > best.get(int(j), -np.inf):
                    best[int(j)] = float(s)
        out.append(sorted(best, key=lambda j: -best[j])[:n])
        start += size
    return out


def merge_sources(emb: np.ndarray, anchors: list[np.ndarray], near: list[list[int]], popular: np.ndarray,
                  k: int, share: float, exclude: list[set[int]]) -> Candidates:
    """Merge `round(share * k)` popular rows with index neighbours `near` into K per query,
    ordered by best cosine to the query's anchors (A_i, d). When one source runs short, the
    other fills in; lists shorter than K (a tiny catalog) are cut to the shortest."""
    n_pop = int(round(share * k))
    rows, sources, scores = [], [], []
    for vecs, close, skip in zip(anchors, near, exclude, strict=True):
        pop = [int(p) for p in popular[: k + len(skip)] if int(p) not in skip]
        chosen = dict.fromkeys(pop[:n_pop], "popular")
        for j in close:
            if len(chosen) == k:
                break
            if j not in skip:
                chosen.setdefault(j, "index")
        for j in pop[n_pop:]:  # a short neighbour list: popular images fill it
            if len(chosen) == k:
                break
            chosen.setdefault(j, "popular")
        picked = np.fromiter(chosen, dtype=np.int64, count=len(chosen))
        best = (emb[picked] @ vecs.T).max(axis=1) if len(vecs) and len(picked) else np.zeros(len(picked))
        order = np.argsort(-best, kind="stable")
        rows.append(picked[order])
        sources.append(np.array(list(chosen.values()), dtype=object)[order])
        scores.append(best[order].astype(np.float32))
    width = min(map(len, rows)) if rows else k
    return Candidates(np.array([r[:width] for r in rows], dtype=np.int64).reshape(len(rows), width),
                      np.array([s[:width] for s in scores], dtype=np.float32).reshape(len(rows), width),
                      np.array([s[:width] for s in sources], dtype=object).reshape(len(rows), width))


def recall_at(lists, relevant: list[set[int]]) -> float:
    """Mean recall of each list against its relevant set (queries with none left out)."""
    values = [len(set(map(int, row)) & rel) / len(rel) for row, rel in zip(lists, relevant, strict=True) if rel]
    return float(np.mean(values)) if values else 0.0


def choose_share(emb: np.ndarray, anchors: list[np.ndarray], near: list[list[int]], popular: np.ndarray,
                 exclude: list[set[int]], relevant: list[set[int]],
                 config: CandidateConfig = CandidateConfig()) -> dict:
    """The popular share of `config.shares` with the best recall@K on the validation queries
    (`relevant`, one set per query; ties go to the smaller share).
    Returns {"share", "recall": {share: recall}, "queries"}."""
    recall = {share: recall_at(merge_sources(emb, anchors, near, popular, config.k, share, exclude).rows, relevant)
              for share in config.shares}
    best = max(config.shares, key=lambda s: (round(recall[s], 6), -s))
    return {"share": float(best), "recall": recall, "queries": sum(1 for r in relevant if r)}


def popular_rows(home: Home, frame: pl.DataFrame) -> np.ndarray:
    """Rows of the aligned catalog `frame` by train-split engagement, most engaged first
    (unengaged images are not popular candidates)."""
    pos = {k: i for i, k in enumerate(frame["image_id"].to_list())}
    return np.array([pos[i] for i in popularity(home)["image_id"].to_list() if i in pos], dtype=np.int64)


def chosen_share(home: Home, task: str = "images") -> float:
    """The popular share chosen for `task` on this catalog (0 before one was chosen)."""
    if not has_table(home, "candidate_mix"):
        return 0.0
    mix = read_table(home, "candidate_mix").filter(pl.col("chosen") & (pl.col("task") == task))["popular_share"]
    return float(mix[0]) if len(mix) else 0.0


def save_mix(home: Home, task: str, mix: dict) -> pl.DataFrame:
    """Store `choose_share`'s result for `task` in the `candidate_mix` table (the other task's
    rows kept); returns this task's rows."""
    rows = pl.DataFrame([{"task": task, "popular_share": s, "val_recall": r, "chosen": s == mix["share"]}
                         for s, r in mix["recall"].items()], schema=CANDIDATE_MIX_SCHEMA)
    kept = read_table(home, "candidate_mix").filter(pl.col("task") != task) if has_table(home, "candidate_mix") else None
    write_table(home, "candidate_mix", rows if kept is None else pl.concat([kept, rows]))
    return rows


@dataclass
class Queries:
    """Queries as anchors and exclusions: one image, a user's recent history, or a vector."""

    anchors: list[np.ndarray]  # per query (A_i, d) anchor embeddings
    exclude: list[set[int]]  # per query: rows never to recommend (the query, the history)

    @classmethod
    def images(cls, emb: np.ndarray, rows) -> Queries:
        return cls([emb[int(r)][None] for r in rows], [{int(r)} for r in rows])

    @classmethod
    def histories(cls, emb: np.ndarray, histories: list[list[int]], recent: int) -> Queries:
        """Users' histories (rows, oldest first): the `recent` latest are the anchors."""
        return cls([emb[np.asarray(h[-recent:], dtype=np.int64)] for h in histories], [set(map(int, h)) for h in histories])


def catalog_candidates(home: Home, frame: pl.DataFrame, emb: np.ndarray, queries: Queries, k: int = CANDIDATES,
                       share: float | None = None, task: str = "images") -> Candidates:
    """The merged candidates of `queries` over the aligned catalog, at the share chosen for
    `task` (or `share`)."""
    index, ids, _ = load_index(home, mmap=True)
    share = chosen_share(home, task) if share is None else share
    near = index_neighbours(index, queries.anchors, 2 * k, queries.exclude,  # room for overlap with `popular`
                            frame_rows(ids, frame))
    return merge_sources(emb, queries.anchors, near, popular_rows(home, frame), k, share, queries.exclude)


def frame_rows(ids: np.ndarray, frame: pl.DataFrame) -> np.ndarray | None:
    """The rows of `frame` (the catalog, read from an index generation before) that index
    generation `ids`'s rows hold: None when they are the same rows. They differ when
    `faiss_index` switched generations in between; then each row goes through its image id,
    and an image `frame` does not hold maps to -1."""
    frame_ids = frame["image_id"].to_numpy()
    if len(ids) == len(frame_ids) and (ids == frame_ids).all():
        return None
    pos = {image_id: row for row, image_id in enumerate(frame_ids.tolist())}
    return np.array([pos.get(image_id, -1) for image_id in ids.tolist()], dtype=np.int64)


def source_recall(home: Home, frame: pl.DataFrame, emb: np.ndarray, queries: Queries, merged: np.ndarray,
                  relevant: list[set[int]], task: str = "images") -> dict:
    """Recall@K of each source alone (index neighbours, popular images) and of the `merged`
    candidates (Q, K) the rerankers see, against each query's relevant rows: the report's
    `candidate_sources`."""
    k = merged.shape[1]
    alone = {name: catalog_candidates(home, frame, emb, queries, k, share=share).rows
             for name, share in (("index", 0.0), ("popular", 1.0))}
    return {"popular_share": chosen_share(home, task), "k": int(k),
            "recall_at_k": {**{n: recall_at(rows, relevant) for n, rows in alone.items()},
                            "merged": recall_at(merged, relevant)}}
