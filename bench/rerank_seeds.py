"""Benchmark: how much of a reranker's quality on a lake is seed noise, in both tasks.

On a `LENSLESS_HOME` after `lensless demo` (or `lensless run`), retrains the gutted reranker
(or, with `--model full_vlm`, the full-VLM baseline on pixels; `--model sequential`, the
non-LLM peer) at the pipeline's budget (`assets.reranker.assets.RerankerRunConfig`: the same
groups of both tasks, the same histories and prior) once per seed, then scores the
evaluation report's held-out queries and candidates of both tasks: related images, and for
a user (test users' futures). Prints, per seed, validation NDCG@10 and held-out NDCG@10 of
each task, with the paired difference to retrieval alone (bootstrap 95% interval over
queries); the last line is JSON with the spread across seeds. Seed 0 reproduces the
pipeline's own model when the pipeline trained on the CPU (the bench always does).

    python bench/rerank_seeds.py --lake .lensless --seeds 0,1,2,3,4   # ~2 min per seed, 2 cores
    python bench/rerank_seeds.py --lake .lensless --model full_vlm --seeds 0,1,2   # ~5 min per seed

`--train-groups`, `--user-train-groups`, `--stage1-epochs`, `--stage2-epochs`,
`--evals-per-epoch`, `--lr`, `--lora-lr` and `--lora-targets` override the budget and the
optimiser (default: the pipeline's), to see whether more data, more passes or more capacity
would pay; `--no-similarity` trains without the similarity token (ablation).
`--history-pool M` reads a user's history through a learned pool of M tokens instead of its
H x k soft tokens (gutted only); each row then also gives the user task's counted FLOPs and
prompt tokens per candidate, so the two ways of reading a history compare on quality and cost:

    python bench/rerank_seeds.py --lake .lensless --seeds 0,1 --history-pool 0
    python bench/rerank_seeds.py --lake .lensless --seeds 0,1 --history-pool 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", required=True, help="a LENSLESS_HOME after `lensless demo`")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated reranker seeds")
    ap.add_argument("--model", choices=("gutted", "full_vlm", "sequential"), default="gutted",
                    help="which reranker to retrain: ours on embeddings, the baseline on pixels, or the non-LLM peer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-groups", type=int, help="related-images training groups (default: the pipeline's)")
    ap.add_argument("--user-train-groups", type=int, help="for-a-user training groups (default: the pipeline's)")
    ap.add_argument("--lora-targets", help="comma-separated LM linear names LoRA adapts (default: the pipeline's)")
    ap.add_argument("--lr", type=float, help="projector learning rate (default: RerankerTrainConfig's)")
    ap.add_argument("--lora-lr", type=float, help="LoRA learning rate (default: RerankerTrainConfig's)")
    ap.add_argument("--stage1-epochs", type=int, help="projector-only epochs (default: the pipeline's)")
    ap.add_argument("--stage2-epochs", type=int, help="LoRA + projector epochs (default: the pipeline's)")
    ap.add_argument("--evals-per-epoch", type=int, default=1, help="validation evaluations per epoch")
    ap.add_argument("--no-prior", action="store_true", help="train and score without the engagement prior (ablation)")
    ap.add_argument("--no-similarity", action="store_true",
                    help="gutted and full VLM: train and score without the similarity token (ablation)")
    ap.add_argument("--history-pool", type=int, default=0,
                    help="gutted: read a history as M learned pooled tokens (0: its H x k soft tokens)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("models.train_reranker").setLevel(logging.WARNING)

    from assets.evaluation.metrics import list_metrics
    from assets.evaluation.systems import evaluation_inputs, ranked_ids
    from assets.evaluation.users import test_users
    from assets.reranker.aligned import aligned_pixels, rows_of
    from assets.reranker.assets import RerankerRunConfig
    from assets.reranker.histories import HistoryConfig
    from assets.reranker.pairs import training_set
    from assets.retrieval.candidates import Queries, catalog_candidates
    from assets.store.files import Home
    from models.cost import measure_costs
    from models.full_vlm import FullVLMConfig, build_full_vlm
    from models.gutted_vlm import GuttedConfig, build_gutted
    from models.ranking_metrics import bootstrap_ci
    from models.scoring import CANDIDATES, score_candidates
    from models.sequential import SequentialConfig, build_sequential
    from models.train_reranker import RerankerTrainConfig, train_reranker

    home = Home.at(Path(args.lake).resolve())
    inp = evaluation_inputs(home, log=lambda *_: None)
    frame, ids, emb, q_rows, c_rows, rel = (inp[k] for k in ("frame", "ids", "emb", "query_rows", "cand_rows", "relevant"))
    budget = RerankerRunConfig()
    budget = budget.model_copy(update={k: v for k, v in (("max_train_groups", args.train_groups),
                                                         ("max_user_train_groups", args.user_train_groups),
                                                         ("stage1_epochs", args.stage1_epochs),
                                                         ("stage2_epochs", args.stage2_epochs)) if v is not None})
    history = budget.full_vlm_history if args.model == "full_vlm" else HistoryConfig.length
    budgets = {"training_pairs": (budget.max_train_groups, budget.max_val_groups),
               "user_pairs": (budget.max_user_train_groups, budget.max_user_val_groups)}
    train, val, queries, val_is_user = training_set(home, ids, budgets, budget.seed, history)
    features = aligned_pixels(home, frame) if args.model == "full_vlm" else emb
    prior = None if args.no_prior else inp["prior"]
    buckets = 0 if args.no_prior else GuttedConfig.prior_buckets

    # the user task's held-out users and candidates, as the report has them
    pos = rows_of(frame)
    users, hist = test_users(home, frame, 400, 0)
    u_cands = catalog_candidates(home, frame, emb, Queries.histories(emb, [h[h >= 0] for h in hist],
                                                                       HistoryConfig.recent), CANDIDATES, task="users")
    u_rel = [{t: float(g) for t, g in zip(ts, gs, strict=True) if t in pos}
             for ts, gs in zip(users["targets"].to_list(), users["gains"].to_list(), strict=True)]
    retrieval = {"images": list_metrics([[ids[j] for j in r] for r in c_rows], rel)["ndcg_at_10"],
                 "users": list_metrics([[ids[j] for j in r] for r in u_cands.rows], u_rel)["ndcg_at_10"]}
    print("budget", json.dumps({"train_groups": len(train), "val_groups": len(val), "queries": len(queries),
                                "history": history, "stage1_epochs": budget.stage1_epochs,
                                "stage2_epochs": budget.stage2_epochs, "evals_per_epoch": args.evals_per_epoch}))
    print("retrieval", json.dumps({t: round(float(v.mean()), 4) for t, v in retrieval.items()}), flush=True)

    def build(seed: int):
        if args.model == "gutted":
            return build_gutted(GuttedConfig(base=budget.base, embed_dim=emb.shape[1], num_tokens=budget.num_tokens,
                                             prior_buckets=buckets, history_pool=args.history_pool,
                                             similarity_token=not args.no_similarity, seed=seed))
        if args.model == "sequential":
            return build_sequential(SequentialConfig(embed_dim=emb.shape[1], prior_buckets=buckets, seed=seed))
        return build_full_vlm(FullVLMConfig(base=budget.base, prior_buckets=buckets,
                                            similarity_token=not args.no_similarity, seed=seed))

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        started = time.perf_counter()
        model = build(seed)
        stages = ((budget.stage1_epochs + budget.stage2_epochs, 0) if args.model == "sequential"
                  else (budget.stage1_epochs, budget.stage2_epochs))
        cfg = RerankerTrainConfig(stage1_epochs=stages[0], stage2_epochs=stages[1], seed=seed, device="cpu",
                                  evals_per_epoch=args.evals_per_epoch,
                                  **({"lora_targets": tuple(args.lora_targets.split(","))} if args.lora_targets else {}),
                                  **{k: v for k, v in (("lr", args.lr), ("lora_lr", args.lora_lr)) if v is not None})
        metrics = train_reranker(model, features, train, val, cfg, prior=prior, queries=queries,
                                 val_is_user=val_is_user)
        ndcg = {"images": list_metrics(ranked_ids(ids, c_rows, score_candidates(model, features, q_rows, c_rows,
                                                                                 prior=prior)), rel)["ndcg_at_10"],
                "users": list_metrics(ranked_ids(ids, u_cands.rows, score_candidates(
                    model, features, hist[:, -history:], u_cands.rows, prior=prior)), u_rel)["ndcg_at_10"]}
        row = {"seed": seed, "val_ndcg10": round(metrics["best_val_ndcg10"], 4),
               "seconds": round(time.perf_counter() - started, 1)}
        if args.model != "sequential":  # the user task's cost per candidate, on 4 test users
            users_hist = hist[:4, -history:]
            cost = measure_costs({"model": (model, features, users_hist)}, users_hist, u_cands.rows[:4],
                                 prior=prior)["model"]
            row["users_gflops_per_candidate"] = round(cost["flops_per_candidate"] / 1e9, 4)
            row["users_tokens_per_candidate"] = round(cost["tokens_per_candidate"], 1)
            row["users_ms_per_1k_candidates"] = round(cost["ms_per_1k_candidates"], 1)
        for task, values in ndcg.items():
            diff = bootstrap_ci(values - retrieval[task])
            row[f"{task}_test_ndcg10"] = round(float(values.mean()), 4)
            row[f"{task}_minus_retrieval"] = [round(diff[k], 4) for k in ("mean", "lo", "hi")]
        rows.append(row)
        print(args.model, json.dumps(row), flush=True)
    result = {"lake": str(home.root), "model": args.model, "prior": not args.no_prior,
              "similarity": not args.no_similarity,
              "history_pool": args.history_pool, "queries": len(q_rows),
              "test_users": users.height, "seeds": len(rows), "train_groups": len(train),
              "stage_epochs": [budget.stage1_epochs, budget.stage2_epochs], "per_seed": rows}
    for task in ("images", "users"):
        test = np.array([r[f"{task}_test_ndcg10"] for r in rows])
        result[task] = {
            "retrieval_test_ndcg10": round(float(retrieval[task].mean()), 4),
            "test_ndcg10": {"mean": round(float(test.mean()), 4), "min": float(test.min()), "max": float(test.max())},
            "seeds_significantly_above": sum(r[f"{task}_minus_retrieval"][1] > 0 for r in rows),
            "seeds_significantly_below": sum(r[f"{task}_minus_retrieval"][2] < 0 for r in rows),
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
