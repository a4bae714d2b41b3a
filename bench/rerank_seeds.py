"""Benchmark: how much of a reranker's quality on a lake is seed noise.

On a `LENSLESS_HOME` after `lensless demo` (or `lensless run`), retrains the gutted reranker
(or, with `--model full_vlm`, the full-VLM baseline on pixels) at the pipeline's budget (`assets.reranker.assets.RerankerRunConfig`, the same train and
validation groups) once per seed, then scores the evaluation report's held-out queries and
candidates. Prints, per seed, validation NDCG@10 and held-out NDCG@10, with the paired
difference to retrieval alone (bootstrap 95% interval over queries); the last line is JSON
with the spread across seeds. Seed 0 reproduces the pipeline's own model when the pipeline
trained on the CPU (the bench always does).

    python bench/rerank_seeds.py --lake .lensless --seeds 0,1,2,3,4   # ~45 s per seed, 2 cores
    python bench/rerank_seeds.py --lake .lensless --model full_vlm --seeds 0,1,2   # ~5 min per seed

`--train-groups`, `--stage1-epochs`, `--stage2-epochs` and `--evals-per-epoch` override the
budget (default: the pipeline's), to see whether more data or more passes would pay.
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
    ap.add_argument("--model", choices=("gutted", "full_vlm"), default="gutted",
                    help="which reranker to retrain: ours on embeddings, or the baseline on pixels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-groups", type=int, help="training groups (default: the pipeline's max_train_groups)")
    ap.add_argument("--stage1-epochs", type=int, help="projector-only epochs (default: the pipeline's)")
    ap.add_argument("--stage2-epochs", type=int, help="LoRA + projector epochs (default: the pipeline's)")
    ap.add_argument("--evals-per-epoch", type=int, default=1, help="validation evaluations per epoch")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("models.train_reranker").setLevel(logging.WARNING)

    from assets.evaluation.metrics import list_metrics
    from assets.evaluation.systems import evaluation_inputs, ranked_ids
    from assets.reranker.aligned import aligned_pixels
    from assets.reranker.assets import RerankerRunConfig
    from assets.reranker.pairs import budget_groups
    from assets.store.files import Home
    from models.full_vlm import FullVLMConfig, build_full_vlm
    from models.gutted_vlm import GuttedConfig, build_gutted
    from models.ranking_metrics import bootstrap_ci
    from models.scoring import score_candidates
    from models.train_reranker import RerankerTrainConfig, train_reranker

    home = Home.at(Path(args.lake).resolve())

    inp = evaluation_inputs(home, log=lambda *_: None)
    ids, emb, q_rows, c_rows, rel = (inp[k] for k in ("ids", "emb", "query_rows", "cand_rows", "relevant"))
    retrieval = list_metrics([[ids[j] for j in r] for r in c_rows], rel)["ndcg_at_10"]
    budget = RerankerRunConfig()
    budget = budget.model_copy(update={k: v for k, v in (("max_train_groups", args.train_groups),
                                                         ("stage1_epochs", args.stage1_epochs),
                                                         ("stage2_epochs", args.stage2_epochs)) if v is not None})
    train, val = budget_groups(home, ids, budget.max_train_groups, budget.max_val_groups, budget.seed)
    print("budget", json.dumps({"train_groups": len(train), "val_groups": len(val), "stage1_epochs": budget.stage1_epochs,
                                "stage2_epochs": budget.stage2_epochs, "evals_per_epoch": args.evals_per_epoch}))
    print("retrieval", json.dumps({"test_ndcg10": round(float(retrieval.mean()), 4)}), flush=True)
    features = emb if args.model == "gutted" else aligned_pixels(home, inp["frame"])

    def build(seed: int):
        if args.model == "gutted":
            return build_gutted(GuttedConfig(base=budget.base, embed_dim=emb.shape[1], num_tokens=budget.num_tokens,
                                             seed=seed))
        return build_full_vlm(FullVLMConfig(base=budget.base, seed=seed))

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        started = time.perf_counter()
        model = build(seed)
        cfg = RerankerTrainConfig(stage1_epochs=budget.stage1_epochs, stage2_epochs=budget.stage2_epochs, seed=seed, device="cpu",
                          evals_per_epoch=args.evals_per_epoch)
        metrics = train_reranker(model, features, train, val, cfg)
        ndcg = list_metrics(ranked_ids(ids, c_rows, score_candidates(model, features, q_rows, c_rows)), rel)["ndcg_at_10"]
        diff = bootstrap_ci(ndcg - retrieval)
        rows.append({"seed": seed, "val_ndcg10": round(metrics["best_val_ndcg10"], 4),
                     "test_ndcg10": round(float(ndcg.mean()), 4),
                     "test_minus_retrieval": [round(diff[k], 4) for k in ("mean", "lo", "hi")],
                     "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
        print(args.model, json.dumps(rows[-1]), flush=True)
    test = np.array([r["test_ndcg10"] for r in rows])
    result = {
        "lake": str(home.root), "model": args.model, "queries": len(q_rows), "seeds": len(rows), "train_groups": len(train),
        "stage_epochs": [budget.stage1_epochs, budget.stage2_epochs],
        "retrieval_test_ndcg10": round(float(retrieval.mean()), 4),
        "test_ndcg10": {"mean": round(float(test.mean()), 4), "min": float(test.min()), "max": float(test.max())},
        "seeds_above_retrieval": int((test > retrieval.mean()).sum()),
        "seeds_significantly_above": sum(r["test_minus_retrieval"][1] > 0 for r in rows),
        "seeds_significantly_below": sum(r["test_minus_retrieval"][2] < 0 for r in rows),
        "per_seed": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
