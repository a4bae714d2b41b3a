"""The aligned data the reranker assets share: catalog rows, embeddings, groups. No Dagster.

Row order is the index's: row i is `image_id` i of `indexes/ids.parquet`, so FAISS ids are
rows. `build_pairs` turns the engagement log (or labels, without engagement) into training
and validation groups with hard negatives from the index, and the evaluation queries with
their relevant sets; `load_groups` maps the stored groups back to rows, and `budget_groups`
keeps the strongest of them within a training budget.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from assets.index_ops import load_index
from assets.lake import catalog, load_pixels
from assets.pairs import (
    PairConfig,
    coengagement,
    label_relevance,
    mine_groups,
    relevance_counts,
    strongest_first,
)
from assets.storage import lake_path, read_parquet
from index.search import search
from models.cost import flops_per_candidate, ms_per_1k_candidates, tokens_per_candidate
from models.train_reranker import feature_tensor

# strength: users who co-engaged query and positive (1 for label relevance)
GROUP_SCHEMA = {"split": pl.Utf8, "query": pl.Utf8, "positive": pl.Utf8, "negatives": pl.List(pl.Utf8),
                "strength": pl.Int32}
QUERY_SCHEMA = {"query": pl.Utf8, "relevant": pl.List(pl.Utf8), "source": pl.Utf8}


def aligned_catalog() -> tuple[pl.DataFrame, np.ndarray]:
    """(catalog frame in index row order, embeddings (N, d) float32 in the same order)."""
    _, ids, _ = load_index(mmap=True)
    order = pl.DataFrame({"image_id": ids}).with_row_index("pos")
    frame = order.join(catalog(), on="image_id", how="left").sort("pos")
    emb = read_table_embeddings()
    emb = order.join(emb, on="image_id", how="left").sort("pos")
    assert emb["embedding"].null_count() == 0, "index holds image ids without embeddings; rebuild the index"
    return frame, np.ascontiguousarray(emb["embedding"].to_numpy(), dtype=np.float32)


def read_table_embeddings() -> pl.DataFrame:
    """All image_embeddings partitions (image_id, embedding)."""
    folder = lake_path("image_embeddings", "x").parent
    frames = [read_parquet(p) for p in sorted(folder.iterdir()) if p.name.endswith(".parquet")]
    return pl.concat(frames).select("image_id", "embedding")


def aligned_pixels(frame: pl.DataFrame) -> np.ndarray:
    """Canonical pixels in the row order of `frame` (from `aligned_catalog`)."""
    return load_pixels(frame.select("batch", "row"))


def _split_of(image_id: str) -> str:
    bucket = int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket < 2 else ("val" if bucket < 3 else "train")


def build_pairs(config: PairConfig = PairConfig()) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(groups in GROUP_SCHEMA, evaluation queries in QUERY_SCHEMA, stats)."""
    frame, emb = aligned_catalog()
    ids = frame["image_id"].to_list()
    index, _, _ = load_index(mmap=True)
    _, neighbours = search(index, emb, config.neighbours + 1)
    events = lake_path("engagement_events")
    per_split = coengagement(str(events), config) if events.exists() else None
    has_engagement = per_split is not None and per_split["train"].height > 0
    labels = frame["label"].to_list()
    if has_engagement:
        source = "co-engagement"
        rel = {s: relevance_counts(per_split[s], ids) for s in ("train", "val", "test")}
        mine_labels = None
    else:
        if all(lab is None for lab in labels):
            raise ValueError("no engagement and no labels: nothing says which images are relevant to each other")
        source = "labels"
        splits = np.array([_split_of(i) for i in ids])
        rel = {s: {q: dict.fromkeys(r, 1) for q, r in label_relevance(labels, np.flatnonzero(splits == s)).items()}
               for s in ("train", "val", "test")}
        mine_labels = labels
    rows = []
    counts = {}
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


def load_groups(ids: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Stored groups of `split` as ((G, 2+n) int rows into the aligned catalog, strength (G,))."""
    groups = read_parquet(lake_path("training_pairs")).filter(pl.col("split") == split)
    width = 2 + (len(groups["negatives"][0]) if groups.height else 0)
    if "strength" in groups.columns:
        strength = groups["strength"].fill_null(1).to_numpy().astype(np.int64)
    else:  # written before groups carried it: all equal
        strength = np.ones(groups.height, np.int64)
    pos = {k: i for i, k in enumerate(ids)}
    out, kept = [], []
    for i, (q, p, negs) in enumerate(zip(groups["query"], groups["positive"], groups["negatives"], strict=True)):
        if q in pos and p in pos and all(n in pos for n in negs):
            out.append([pos[q], pos[p], *[pos[n] for n in negs]])
            kept.append(i)
    return np.asarray(out, dtype=np.int64).reshape(-1, width), strength[kept]


def budget_groups(ids: list[str], max_train: int, max_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) groups a reranker trains on: the strongest stored groups within budget.

    Past a budget, groups are kept strongest first (most users behind the query-positive
    pair), equal strengths in a seeded random order, and returned in stored order. On the demo
    catalog the 1,000 strongest train groups have positives of the query's taste in 100% of
    groups, against 53% for a random 1,000; with the encoder of commit 70002da a pair MLP
    trained on them scored held-out NDCG@10 0.047 instead of 0.041. The reranker assets and the
    benchmarks all call this, so a benchmark scores the exact groups the pipeline's models were
    trained and selected on.
    """
    rng = np.random.default_rng(seed)
    out = []
    for split, cap in (("train", max_train), ("val", max_val)):
        groups, strength = load_groups(ids, split)
        if len(groups) > cap:
            groups = groups[np.sort(strongest_first(strength, rng)[:cap])]
        out.append(groups)
    return out[0], out[1]


def score_candidates(scorer, features, query_rows: np.ndarray, cand_rows: np.ndarray, batch: int = 8,
                     progress=None) -> np.ndarray:
    """Scores (Q, K) of each query's candidates (features: embeddings or pixels), `batch` queries at a time."""
    import torch

    scorer.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(query_rows), batch):
            q = feature_tensor(features[query_rows[i: i + batch]])
            c = feature_tensor(features[cand_rows[i: i + batch]])
            out.append(scorer.score(q, c).float().numpy())
            if progress is not None:
                progress(min(i + batch, len(query_rows)), len(query_rows))
    return np.concatenate(out) if out else np.zeros((0, cand_rows.shape[1]), np.float32)


def measure_cost(scorer, features, groups, queries: int = 4) -> dict:
    """FLOPs and ms per candidate, tokens per candidate, on real validation groups.

    Raw features go in (pixels for the full VLM), so the vision tower is part of its cost.
    """
    feats, cands = feature_tensor(features[groups[:queries, 0]]), feature_tensor(features[groups[:queries, 1:]])
    scorer.eval()
    return {
        "flops_per_candidate": flops_per_candidate(scorer, feats, cands),
        "ms_per_1k_candidates": ms_per_1k_candidates(scorer, feats, cands, repeats=3),
        "tokens_per_candidate": float(tokens_per_candidate(scorer, cands.shape[1])["per_candidate_cache"]),
    }
