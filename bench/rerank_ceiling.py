"""Benchmark: what a reranker of the lake's candidates could gain, and from which signal.

On a `LENSLESS_HOME` after `lensless demo` (or `lensless run`), scores two sets with NDCG@10:
- the validation groups `gutted_reranker` is selected on (one positive among 8), and
- the evaluation report's held-out lists (each query's index candidates, relevance from test
  users after the time cut-off),
with these rankers of the same candidates:
- `retrieval`: cosine order; `shuffled`: a random order (mean of 5), so the value of the
  cosine order inside the candidate list shows; `popularity`: train-split engagement count;
- `mlp_<N>`: a small pair MLP (features [q * c, |q - c|] of the two embeddings, one hidden
  layer) trained with the rerankers' listwise loss on the N strongest stored training groups
  (as the pipeline picks them). A model this direct is a reference for what the embeddings
  support at a data budget; `mlp_<N>_prior` adds one input, the candidate's standardised
  log(1 + train-split engagement count): what a behavioural prior adds to the embeddings;
- `taste_oracle` (demo catalog only, whose catalog file knows each image's taste cluster):
  same-taste candidates first, then cosine order.

    python bench/rerank_ceiling.py --lake .lensless --groups 1000,all   # ~1 min on the demo, 2 cores

The last line is JSON with both sets' numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.ranking_metrics import ndcg_at_k, positive_first_relevance  # noqa: E402


def val_ndcg(scores: torch.Tensor) -> float:
    """Mean NDCG@10 of groups whose column 0 is the positive, as the rerankers' validation
    computes it (ties count against the positive)."""
    scores = scores.detach().numpy()
    return float(ndcg_at_k(scores, positive_first_relevance(*scores.shape)).mean())


def pair_features(emb: torch.Tensor, groups: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """(G, C, 2d [+1]) features of rows [query, candidates...]: [q * c, |q - c|] per candidate,
    and the candidate's `prior[c]` when given."""
    q = emb[groups[:, 0]][:, None].expand(-1, groups.shape[1] - 1, -1)
    c = emb[groups[:, 1:]]
    extra = [] if prior is None else [prior[groups[:, 1:]][..., None]]
    return torch.cat([q * c, (q - c).abs(), *extra], -1)


def fit_mlp(emb: torch.Tensor, train: torch.Tensor, val: torch.Tensor, epochs: int, seed: int,
            prior: torch.Tensor | None = None):
    """(best val NDCG@10 over the epochs, the net of that epoch) of a one-hidden-layer pair MLP
    trained with listwise CE on groups [query, positive, negatives...]: selected on validation,
    as the rerankers' early stopping selects theirs."""
    torch.manual_seed(seed)
    width = 2 * emb.shape[1] + (prior is not None)
    net = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    x_val, best, state = pair_features(emb, val, prior), -1.0, None
    zeros = torch.zeros(len(train), dtype=torch.long)
    for _ in range(epochs):
        for batch in torch.randperm(len(train)).split(64):
            loss = F.cross_entropy(net(pair_features(emb, train[batch], prior)).squeeze(-1), zeros[: len(batch)])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            score = val_ndcg(net(x_val).squeeze(-1))
        if score > best:
            best, state = score, copy.deepcopy(net.state_dict())
    net.load_state_dict(state)
    return best, net


def taste_of(home, frame) -> np.ndarray | None:
    """Each row's demo taste cluster, or None when the lake is not the demo catalog."""
    import polars as pl

    found = sorted(home.cache("sources", "demo").glob("*/catalog.parquet"))
    if not found:
        return None
    demo = pl.read_parquet(found[-1]).select("uri", "taste")
    joined = frame.select("uri").join(demo, on="uri", how="left", maintain_order="left")["taste"]
    return None if joined.null_count() else joined.to_numpy()


def ndcg_lists(ids, cand_rows: np.ndarray, relevant: list[set], scores: np.ndarray) -> float:
    """Mean NDCG@10 of each query's candidates ordered by descending score (stable)."""
    from assets.evaluation.metrics import list_metrics
    from assets.evaluation.systems import ranked_ids

    return round(float(list_metrics(ranked_ids(ids, cand_rows, scores), relevant)["ndcg_at_10"].mean()), 4)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", required=True, help="a LENSLESS_HOME after `lensless demo`")
    ap.add_argument("--groups", default="1000,all", help="comma-separated training group counts, or 'all'")
    ap.add_argument("--epochs", type=int, default=10, help="MLP epochs (the best on validation is kept)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {args.epochs}")
    torch.set_num_threads(args.threads)

    from assets.evaluation.systems import evaluation_inputs
    from assets.ingestion.coengagement import popularity
    from assets.reranker.assets import RerankerRunConfig
    from assets.reranker.pairs import budget_groups, load_groups
    from assets.store.files import Home

    home = Home.at(Path(args.lake).resolve())
    inp = evaluation_inputs(home, log=lambda *_: None)
    frame, ids, emb_np = inp["frame"], inp["ids"], inp["emb"]
    q_rows, c_rows, relevant = inp["query_rows"], inp["cand_rows"], inp["relevant"]
    emb = torch.as_tensor(emb_np)
    budget = RerankerRunConfig()
    _, val_np = budget_groups(home, ids, budget.max_train_groups, budget.max_val_groups, budget.seed)
    every = len(load_groups(home, ids, "train")[0])
    if every == 0 or len(val_np) == 0:
        raise SystemExit("the lake has no training or validation groups: run `lensless demo` first")
    val = torch.as_tensor(val_np)
    counts = dict(zip(*popularity(home).select("image_id", "n"), strict=True))
    pop = np.array([counts.get(i, 0) for i in ids], dtype=np.float64)
    order = -np.arange(c_rows.shape[1], dtype=np.float64)[None].repeat(len(c_rows), 0)  # retrieval: cosine order
    rng = np.random.default_rng(0)
    v, t = {}, {}
    v["chance"] = round(float(np.mean([1 / np.log2(r + 2) for r in range(val.shape[1] - 1)])), 4)
    v["retrieval"] = round(val_ndcg((emb[val[:, :1]] * emb[val[:, 1:]]).sum(-1)), 4)
    ties = torch.rand(val[:, 1:].shape, generator=torch.Generator().manual_seed(0))  # random order within ties
    v["popularity"] = round(val_ndcg(torch.as_tensor(pop)[val[:, 1:]] + 1e-6 * ties), 4)
    t["retrieval"] = ndcg_lists(ids, c_rows, relevant, order)
    t["shuffled"] = round(float(np.mean([ndcg_lists(ids, c_rows, relevant, rng.random(c_rows.shape)) for _ in range(5)])), 4)
    def then_retrieval(primary: np.ndarray) -> np.ndarray:  # cosine order breaks ties of `primary`
        return primary + 1e-3 * order / order.shape[1]

    t["popularity"] = ndcg_lists(ids, c_rows, relevant, then_retrieval(pop[c_rows]))
    print(f"val groups ({len(val)}): {v}\nheld-out lists ({len(q_rows)} queries): {t}", flush=True)
    held_q, held_c = torch.as_tensor(q_rows), torch.as_tensor(c_rows)
    log_pop = torch.as_tensor(np.log1p(pop), dtype=torch.float32)
    prior = (log_pop - log_pop.mean()) / log_pop.std().clamp_min(1e-6)
    for n in args.groups.split(","):
        count = every if n == "all" else min(int(n), every)
        train, _ = budget_groups(home, ids, count, budget.max_val_groups, budget.seed)  # the pipeline's pick at its budget
        for name, p in ((f"mlp_{count}", None), (f"mlp_{count}_prior", prior)):
            best, net = fit_mlp(emb, torch.as_tensor(train), val, args.epochs, seed=0, prior=p)
            with torch.no_grad():
                held = net(pair_features(emb, torch.cat([held_q[:, None], held_c], 1), p)).squeeze(-1).numpy()
            v[name], t[name] = round(best, 4), ndcg_lists(ids, c_rows, relevant, held)
            print(f"pair MLP{' + prior' if p is not None else ''}, {count} groups: val {v[name]}, held-out {t[name]}",
                  flush=True)
    taste = taste_of(home, frame)
    if taste is not None:
        tt = torch.as_tensor(taste)
        same = (tt[val[:, 1:]] == tt[val[:, :1]]).float()
        v["taste_oracle"] = round(val_ndcg(same + 1e-3 * ties), 4)
        same_held = (taste[c_rows] == taste[q_rows][:, None]).astype(np.float64)
        t["taste_oracle"] = ndcg_lists(ids, c_rows, relevant, then_retrieval(same_held))
        print(f"taste oracle: val {v['taste_oracle']}, held-out {t['taste_oracle']}", flush=True)
    result = {"lake": str(home.root), "val_groups": len(val), "val_candidates": val.shape[1] - 1,
              "heldout_queries": len(q_rows),
              "val_ndcg10": v, "heldout_ndcg10": t}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
