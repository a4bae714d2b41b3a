"""Benchmark the index package on seeded clustered unit vectors.

    python bench/index.py --n 200000 --d 128 [--json] [--target 0.95] [--seed 0]

Steps, all in one process and on the same queries:
  1. data: n database + n/100 "new" + nq query vectors from one ``synthetic_clustered``
     mixture (queries are held out, not database rows);
  2. build with ``choose_factory(n, d)`` (build_s, includes training);
  3. tune to recall@10 >= target against exact kNN; exact QPS is brute-force IndexFlatIP;
  4. add the 1% new vectors (add_s) vs a full rebuild over n + n/100 (rebuild_s):
     incremental_ratio = add_s / rebuild_s; recall is re-measured after the add;
  5. bytes_per_vector from the written index file.

Prints a human table, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: bench/ is sys.path[0] and its index.py
    _here = os.path.dirname(os.path.abspath(__file__))  # would shadow the index package
    sys.path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import numpy as np  # noqa: E402

from index.build import add_vectors, build_index, choose_factory  # noqa: E402
from index.io import write_index_atomic  # noqa: E402
from index.metrics import exact_knn, recall_at_k, synthetic_clustered  # noqa: E402
from index.search import search  # noqa: E402
from index.threads import configure_threads  # noqa: E402
from index.tune import tune_index  # noqa: E402


def run(
    n: int,
    d: int,
    nq: int,
    k: int,
    target: float,
    seed: int,
    budget: int | None,
    factory: str | None,
    threads: int | None,
) -> dict:
    """Run the benchmark and return the metrics dict (see module doc)."""
    nthreads = configure_threads(threads)
    n_new = max(1, n // 100)
    t = time.perf_counter()
    x = synthetic_clustered(n + n_new + nq, d, seed=seed)
    xb, xnew, xq = x[:n], x[n : n + n_new], x[n + n_new :]
    data_s = time.perf_counter() - t
    ids = np.arange(n, dtype=np.int64)
    factory = factory or choose_factory(n, d, budget)

    t = time.perf_counter()
    index = build_index(xb, ids, factory, seed=seed)
    build_s = time.perf_counter() - t

    t = time.perf_counter()
    tuned = tune_index(index, xb, xq, k=k, target_recall=target)
    tune_s = time.perf_counter() - t

    t = time.perf_counter()
    add_vectors(index, xnew, np.arange(n, n + n_new, dtype=np.int64))
    add_s = time.perf_counter() - t
    x_all = np.concatenate([xb, xnew])
    del x
    _, gt_all = exact_knn(x_all, xq, k)
    recall_after_add = recall_at_k(search(index, xq, k)[1], gt_all, k)

    with tempfile.TemporaryDirectory() as tmp:
        path = write_index_atomic(index, os.path.join(tmp, "bench.index"))
        bytes_per_vector = os.path.getsize(path) / index.ntotal
    del index

    t = time.perf_counter()
    rebuilt = build_index(x_all, np.arange(n + n_new, dtype=np.int64), factory, seed=seed)
    rebuild_s = time.perf_counter() - t
    del rebuilt

    return {
        "n": n,
        "d": d,
        "nq": nq,
        "factory": factory,
        "params": tuned.params,
        "target": target,
        "met_target": tuned.met_target,
        "recall_at_10": round(tuned.recall_at_10, 4),
        "recall_after_add": round(recall_after_add, 4),
        "qps": round(tuned.qps, 1),
        "exact_qps": round(tuned.exact_qps, 1),
        "speedup_vs_exact": round(tuned.qps / tuned.exact_qps, 2),
        "build_s": round(build_s, 2),
        "tune_s": round(tune_s, 2),
        "add_s": round(add_s, 3),
        "n_add": n_new,
        "rebuild_s": round(rebuild_s, 2),
        "incremental_ratio": round(add_s / rebuild_s, 4),
        "bytes_per_vector": round(bytes_per_vector, 1),
        "threads": nthreads,
        "data_s": round(data_s, 2),
        "seed": seed,
        "pareto": tuned.table,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--nq", type=int, default=1000, help="held-out tuning/benchmark queries")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target", type=float, default=0.95, help="recall@k target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=None, help="memory budget in bytes")
    p.add_argument("--factory", default=None, help="override choose_factory")
    p.add_argument(
        "--threads", type=int, default=None, help="faiss/torch threads (default: all usable CPUs)"
    )
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    a = p.parse_args(argv)
    out = run(a.n, a.d, a.nq, a.k, a.target, a.seed, a.budget, a.factory, a.threads)
    if not a.json:
        for key, value in out.items():
            if key != "pareto":
                print(f"{key:>18}  {value}")
        print(f"\n{'params':>28}  {'recall':>7}  {'qps':>10}")
        for row in out["pareto"]:
            print(f"{row['params']:>28}  {row['recall']:7.4f}  {row['qps']:10.1f}")
    print(json.dumps({k: v for k, v in out.items() if k != "pareto"}))
    return out


if __name__ == "__main__":
    main()
