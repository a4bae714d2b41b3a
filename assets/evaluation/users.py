"""The "for a user" task of the evaluation report: test users' futures, six systems, costs. No Dagster.

Test users (never trained on) are read with their history before the cut-off T; what they
engaged at or after T is relevant, a save with gain 2 and a click 1. Images in the history
are neither candidates nor relevant. Systems, all on the same users:
- `random`: K catalog images outside the history (seeded);
- `popularity`: the K most engaged images of the train split outside the history;
- `retrieval`: the user's candidates (neighbours of the latest history images merged with
  popular images, `retrieval.candidates`) by best cosine to those images;
- `sequential`, `gutted`, `full_vlm`: the same candidates re-ranked by the peer, the
  challenger gutted model (the whole history as soft tokens) and the full VLM (the latest
  `history` images it was trained with, as pixels).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.evaluation.metrics import list_metrics, paired_difference_ci, summarise
from assets.evaluation.report import SYSTEMS
from assets.reranker.aligned import aligned_pixels, rows_of
from assets.reranker.histories import HistoryConfig, history_rows, stored_histories
from assets.retrieval.candidates import (
    Queries,
    catalog_candidates,
    popular_rows,
    source_recall,
)
from assets.retrieval.index_store import load_state
from assets.store.files import Home
from assets.store.models import current_dir
from models.checkpoint import load_checkpoint
from models.cost import analytic_flops, measure_costs
from models.rerankers import load_reranker
from models.scoring import CANDIDATES, score_candidates

BARS = ("retrieval", "sequential", "full_vlm", "popularity")  # what the gutted model is compared with, in both tasks


def test_users(home: Home, frame: pl.DataFrame, max_users: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """(test users with a history and a target in the catalog, their history rows (U, H))."""
    users = stored_histories(home).filter(pl.col("split") == "test")
    pos = rows_of(frame)
    hist = history_rows(users, pos, HistoryConfig.length)
    has_target = np.array([any(t in pos for t in ts) for ts in users["targets"].to_list()], dtype=bool)
    keep = (hist >= 0).any(axis=1) & has_target
    users, hist = users.filter(pl.Series(keep)), hist[keep]
    if users.height > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(users.height, max_users, replace=False))
        users, hist = users[pick], hist[pick]
    return users, hist


def _model(home: Home, kind: str):
    """(the current model of `kind`, the history it was trained with)."""
    directory = current_dir(home, kind)
    _, _, extra = load_checkpoint(directory)
    return load_reranker(directory), int(extra.get("history") or HistoryConfig.length)


def user_task(home: Home, inputs: dict, max_users: int = 400, seed: int = 0, cost_queries: int = 4,
              log=print) -> tuple[dict, dict] | None:
    """(the report's `user_task` section, per-user metrics {system: arrays}); None when no
    test user has a history (no engagement log)."""
    frame, emb, prior = inputs["frame"], inputs["emb"], inputs["prior"]
    if not stored_histories(home).height:
        return None
    users, hist = test_users(home, frame, max_users, seed)
    if users.height == 0:
        return None
    ids, pos = frame["image_id"].to_list(), rows_of(frame)
    queries = Queries.histories(emb, [h[h >= 0] for h in hist], HistoryConfig.recent)
    cands = catalog_candidates(home, frame, emb, queries, CANDIDATES, task="users")
    k = cands.rows.shape[1]
    relevant = [{t: float(g) for t, g in zip(ts, gs, strict=True) if t in pos}
                for ts, gs in zip(users["targets"].to_list(), users["gains"].to_list(), strict=True)]
    log(f"user task: {users.height} test users x {k} candidates, histories of up to {hist.shape[1]} images")

    rng = np.random.default_rng(seed)
    popular = popular_rows(home, frame)
    rankings = {"retrieval": [[ids[j] for j in r] for r in cands.rows]}
    rankings["random"] = [[ids[j] for j in rng.permutation(len(ids)) if j not in skip][:k] for skip in queries.exclude]
    rankings["popularity"] = [[ids[j] for j in popular[: k + len(skip)] if j not in skip][:k] for skip in queries.exclude]
    models = {kind: _model(home, f"{kind}_reranker") for kind in ("gutted", "sequential", "full_vlm")}
    pixels = aligned_pixels(home, frame)
    features = {"gutted": emb, "sequential": emb, "full_vlm": pixels}
    query_rows = {kind: hist[:, -h:] for kind, (_, h) in models.items()}
    for kind, (model, h) in models.items():
        log(f"user task: scoring with {kind} (history of up to {h} images)")
        scores = score_candidates(model, features[kind], query_rows[kind], cands.rows, prior=prior)
        rankings[kind] = [[ids[r[j]] for j in np.argsort(-s, kind="stable")] for r, s in zip(cands.rows, scores, strict=True)]

    costs = measure_costs({kind: (model, features[kind], query_rows[kind][:cost_queries])
                           for kind, (model, _) in models.items()},
                          query_rows["gutted"][:cost_queries], cands.rows[:cost_queries], prior=prior)
    state = load_state(home)
    costs["retrieval"] = {"flops_per_candidate": 2.0 * emb.shape[1] * HistoryConfig.recent,
                          "ms_per_1k_candidates": HistoryConfig.recent * 1e6 / (state["qps"] * k), "tokens_per_candidate": 0}
    per_query = {name: list_metrics(rankings[name], relevant) for name in SYSTEMS}
    systems = {name: {**summarise(per_query[name]), **costs.get(name, dict.fromkeys(
        ("flops_per_candidate", "ms_per_1k_candidates", "tokens_per_candidate")))} for name in SYSTEMS}
    for s in systems.values():
        if s["tokens_per_candidate"] is not None:
            s["tokens_per_candidate"] = int(round(s["tokens_per_candidate"]))
    comparisons = {}
    for bar in BARS:
        mean, lo, hi = paired_difference_ci(per_query["gutted"]["ndcg_at_10"], per_query[bar]["ndcg_at_10"])
        comparisons[f"gutted_vs_{bar}"] = {"diff": mean, "ci": [lo, hi]}
    gutted_cfg, full_history = models["gutted"][0].cfg, models["full_vlm"][1]
    equal = analytic_flops("tiny", resolution=models["full_vlm"][0].cfg.resolution, gutted=gutted_cfg,
                           history=HistoryConfig.length, question_tokens=len(models["gutted"][0].question_ids),
                           cue_tokens=len(models["gutted"][0].cue_ids))
    section = {
        "history_length": HistoryConfig.length, "full_vlm_history": full_history, "users": users.height,
        "candidates_per_user": int(k), "systems": systems, "comparisons": comparisons,
        "cost_ratio": {"flops": systems["full_vlm"]["flops_per_candidate"] / systems["gutted"]["flops_per_candidate"],
                       "ms": systems["full_vlm"]["ms_per_1k_candidates"] / systems["gutted"]["ms_per_1k_candidates"],
                       "measured_at_history": {"gutted": HistoryConfig.length, "full_vlm": full_history},
                       "analytic_flops_at_equal_history": equal["ratio"]},
        "candidate_sources": source_recall(home, frame, emb, queries, cands.rows, [{pos[t] for t in r} for r in relevant],
                                           "users"),
    }
    return section, per_query
