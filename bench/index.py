"""Benchmark index selection: what a user sees, against exact search, in one run.

    python bench/index.py --n 200000 --d 128 [--json] [--target 0.95] [--repeats 5]
    python bench/index.py --n 1000000 --d 128
    python bench/index.py --lake ~/.lensless          # the real embeddings of a home
    python bench/index.py --n 1000000 --vectors demo-1m.npy   # bench/demo_embeddings.py's

Steps, all in one process and on the same held-out queries:
  1. data: synthetic ``synthetic_clustered`` unit vectors (n database + n/100 "new" + nq
     queries from one mixture), or with ``--lake HOME`` the image_embeddings of that home
     (shuffled with the seed, then split the same way; n is what the home holds), or with
     ``--vectors FILE`` the first n + n/100 + nq rows of an .npy, split the same way
     (``bench/demo_embeddings.py`` embeds as many demo images as asked with a home's encoder);
  2. select: ``index.select.select_index`` builds and tunes every factory of
     ``candidate_factories(n, d, budget)`` (or ``--factory A --factory B``) and keeps the
     fastest meeting recall@10 >= target; the candidates table is printed;
  3. batch QPS, exact (IndexFlatIP) and the chosen index, interleaved ``--repeats`` times
     (exact, chosen, exact, chosen, ...; models/timing.py): medians, spread, and the ratio
     of the medians (``speedup_vs_exact``); each timed call of the chosen index runs the
     queries as many times as fit in one exact search, so both get the same time window;
     ``--also PARAMS`` (repeatable) times other search settings of the chosen index in the
     same rounds, e.g. to check the tuner's choice against a hand-picked one;
  4. single-query latency p50 / p99 over ``--single`` queries, one query per call, exact
     and chosen interleaved query by query;
     the host's pace, to compare ratios across machines: ``exact_gflops`` (the batch exact
     search's 2 n d flops per query at its median) and ``exact_single_gbps`` (the n d float32
     a single exact query reads, over its p50). Exact search is bound by these, the index by
     memory latency, so a host with slower arithmetic raises ``speedup_vs_exact``;
  5. a 1% add to the chosen index (add_s) against a full rebuild of the same factory over
     n + n/100 (rebuild_s): ``incremental_ratio = add_s / rebuild_s``; recall after the add.

Prints a human table, then ONE JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: bench/ is sys.path[0] and its index.py
    _here = os.path.dirname(os.path.abspath(__file__))  # would shadow the index package
    sys.path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]
    sys.path.insert(0, os.path.dirname(_here))

from dataclasses import asdict  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from index.build import add_vectors, build_index, candidate_factories  # noqa: E402
from index.metrics import exact_knn, recall_at_k, synthetic_clustered  # noqa: E402
from index.search import search  # noqa: E402
from index.select import select_index  # noqa: E402
from index.threads import configure_threads  # noqa: E402
from index.tune import apply_params  # noqa: E402
from models.timing import interleaved, summarise  # noqa: E402


def load_data(n: int, d: int, nq: int, seed: int, lake: str | None, vectors: str | None = None):
    """(xb, xnew, xq, source): database, 1% new vectors, held-out queries."""
    n_new = max(1, n // 100)
    if vectors is not None:  # e.g. bench/demo_embeddings.py: the first n + n/100 + nq rows
        x = np.load(vectors, mmap_mode="r")
        if len(x) < n + n_new + nq:
            raise SystemExit(f"{vectors} holds {len(x):,} vectors; --n {n:,} needs {n + n_new + nq:,} "
                             f"(n, 1% to add, {nq} queries)")
        x = np.ascontiguousarray(x[: n + n_new + nq], dtype=np.float32)
        return _split(x[np.random.default_rng(seed).permutation(len(x))], nq, f"{vectors} (first {len(x):,})")
    if lake is None:
        x = synthetic_clustered(n + n_new + nq, d, seed=seed)
        return x[:n], x[n : n + n_new], x[n + n_new :], "synthetic_clustered"
    from assets.store.files import Home
    from assets.store.lake import read_table

    frame = read_table(Home.at(lake), "image_embeddings")
    if frame.is_empty():
        raise SystemExit(f"{lake} holds no image_embeddings: run `lensless demo` (or ingest + run) there first")
    x = np.ascontiguousarray(frame["embedding"].to_numpy(), dtype=np.float32)
    x = x[np.random.default_rng(seed).permutation(len(x))]
    return _split(x, min(nq, len(x) // 10), f"image_embeddings of {lake}")


def _split(x: np.ndarray, nq: int, source: str):
    """The last nq rows are the queries; of the rest, the last 1% is what gets added."""
    n = len(x) - nq
    n_new = max(1, n // 101)
    return x[: n - n_new], x[n - n_new : n], x[n:], source


def time_searches(xb, index, xq, k: int, repeats: int, n_single: int, settings: dict[str, str]):
    """Exact and `index` side by side: seconds per query of interleaved batch searches
    ({name: summarise(...)}), one entry per search setting (``settings``: {name: parameter
    string}, "chosen" among them), and single-query latencies of the chosen setting
    ({name: [s, ...]}), query by query. Leaves the chosen setting applied."""
    exact = faiss.IndexFlatIP(xb.shape[1])
    exact.add(xb)
    calls, loops = {"exact": lambda: search(exact, xq, k)}, {}
    for name, params in settings.items():
        def one(params=params):
            if len(settings) > 1:  # the settings take turns on one index
                apply_params(index, params)
            search(index, xq, k)

        loops[name] = n = _loops_to_match(calls["exact"], one)
        calls[name] = lambda one=one, n=n: [one() for _ in range(n)]
    batch = interleaved(calls, repeats=repeats)
    apply_params(index, settings["chosen"])
    per_query = {"exact": summarise(batch["exact"], scale=1 / len(xq))}
    for name in settings:
        per_query[name] = summarise(batch[name], scale=1 / (loops[name] * len(xq)))
    single = {"exact": [], "chosen": []}
    for i in range(min(n_single, len(xq))):
        q = xq[i : i + 1]
        lat = interleaved({"exact": lambda q=q: exact.search(q, k), "chosen": lambda q=q: index.search(q, k)},
                          repeats=1, warmup=0)
        for name, s in lat.items():
            single[name] += s
    return per_query, single


def _loops_to_match(slow, fast) -> int:
    """How many runs of `fast` take as long as one of `slow` (at least 1).

    A batch the index answers in 20 ms is at the mercy of one stalled thread (the batch ends
    when the slower OpenMP thread does); timing as many batches as make up one exact search
    gives both sides the same window, so a stall costs them alike."""
    fast()
    t = time.perf_counter()
    slow()
    t_slow = time.perf_counter() - t
    t = time.perf_counter()
    fast()
    return max(1, round(t_slow / max(time.perf_counter() - t, 1e-9)))


def run(a: argparse.Namespace) -> dict:
    """Run the benchmark and return the metrics dict (see module doc)."""
    nthreads = configure_threads(a.threads)
    xb, xnew, xq, source = load_data(a.n, a.d, a.nq, a.seed, a.lake, a.vectors)
    n, d = xb.shape
    ids = np.arange(n, dtype=np.int64)
    factories = a.factory or candidate_factories(n, d, a.budget)
    log = (lambda m: None) if a.json else (lambda m: print(m, file=sys.stderr, flush=True))

    t = time.perf_counter()
    sel = select_index(xb, ids, xq, factories, k=a.k, target_recall=a.target,
                       memory_budget_bytes=a.budget, build_budget_s=a.build_budget, seed=a.seed, log=log)
    select_s = time.perf_counter() - t
    index = sel.index
    settings = {"chosen": sel.tuned.params} | {params: params for params in a.also or []}
    qps, single = time_searches(xb, index, xq, a.k, a.repeats, a.single, settings)
    also = []
    if a.also:
        _, gt = exact_knn(xb, xq, a.k)
        for params in a.also:
            recall = recall_at_k(search(apply_params(index, params), xq, a.k)[1], gt, a.k)
            also.append({"params": params, "recall_at_10": round(recall, 4), "qps": round(1 / qps[params]["median"], 1),
                         "speedup_vs_exact": round(qps["exact"]["median"] / qps[params]["median"], 2)})
        apply_params(index, sel.tuned.params)

    t = time.perf_counter()
    add_vectors(index, xnew, np.arange(n, n + len(xnew), dtype=np.int64))
    add_s = time.perf_counter() - t
    x_all = np.concatenate([xb, xnew])
    _, gt_all = exact_knn(x_all, xq, a.k)
    recall_after_add = recall_at_k(search(index, xq, a.k)[1], gt_all, a.k)
    del index, sel.index
    t = time.perf_counter()
    rebuilt = build_index(x_all, np.arange(len(x_all), dtype=np.int64), sel.factory, seed=a.seed)
    rebuild_s = time.perf_counter() - t
    del rebuilt

    chosen = next(c for c in sel.candidates if c.status == "chosen")
    ms = lambda v: round(v * 1e3, 3)  # noqa: E731
    return {
        "source": source, "n": n, "d": d, "nq": len(xq), "factory": sel.factory, "params": sel.tuned.params,
        "target": a.target, "met_target": sel.tuned.met_target,
        "recall_at_10": round(sel.tuned.recall_at_10, 4), "recall_after_add": round(recall_after_add, 4),
        "qps": round(1 / qps["chosen"]["median"], 1),
        "qps_range": [round(1 / qps["chosen"]["max"], 1), round(1 / qps["chosen"]["min"], 1)],
        "exact_qps": round(1 / qps["exact"]["median"], 1),
        "exact_qps_range": [round(1 / qps["exact"]["max"], 1), round(1 / qps["exact"]["min"], 1)],
        "speedup_vs_exact": round(qps["exact"]["median"] / qps["chosen"]["median"], 2),
        "repeats": a.repeats,
        "p50_ms": ms(np.percentile(single["chosen"], 50)), "p99_ms": ms(np.percentile(single["chosen"], 99)),
        "exact_p50_ms": ms(np.percentile(single["exact"], 50)),
        "exact_p99_ms": ms(np.percentile(single["exact"], 99)),
        "single_queries": len(single["chosen"]),
        "exact_gflops": round(2 * n * d / qps["exact"]["median"] / 1e9, 1),
        "exact_single_gbps": round(4 * n * d / np.percentile(single["exact"], 50) / 1e9, 1),
        "build_s": round(sel.build_s, 2), "select_s": round(select_s, 1),
        "add_s": round(add_s, 3), "n_add": len(xnew), "rebuild_s": round(rebuild_s, 2),
        "incremental_ratio": round(add_s / rebuild_s, 4),
        "bytes_per_vector": chosen.bytes_per_vector, "threads": nthreads, "seed": a.seed,
        "also": also,
        "candidates": [asdict(c) for c in sel.candidates],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000, help="database vectors (synthetic data or --vectors)")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--nq", type=int, default=1000, help="held-out tuning/benchmark queries")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target", type=float, default=0.95, help="recall@k target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=None, help="memory budget in bytes")
    p.add_argument("--build-budget", type=float, default=None, help="reject candidates whose build takes longer (s)")
    p.add_argument("--factory", action="append", help="try only these factories (repeatable)")
    p.add_argument("--lake", default=None, help="a lensless home: benchmark on its image_embeddings")
    p.add_argument("--vectors", default=None, help="an (N, d) float32 .npy (bench/demo_embeddings.py): its first rows")
    p.add_argument("--repeats", type=int, default=5, help="interleaved batch timing repeats")
    p.add_argument("--single", type=int, default=500, help="single-query latency samples")
    p.add_argument("--also", action="append", metavar="PARAMS",
                   help="another search setting of the chosen index (e.g. nprobe=16), timed beside the tuned one (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="faiss threads (default: all usable CPUs)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    a = p.parse_args(argv)
    out = run(a)
    if not a.json:
        for key, value in out.items():
            if key not in ("candidates", "also"):
                print(f"{key:>18}  {value}")
        for row in out["also"]:
            print(f"{'also':>18}  {row['params']}: recall@{a.k} {row['recall_at_10']}, {row['qps']:,} QPS, "
                  f"{row['speedup_vs_exact']}x exact")
        cols = ("factory", "status", "params", "recall_at_10", "qps", "bytes_per_vector", "build_s", "tune_s")
        print("\n" + "  ".join(f"{c:>14}" for c in cols))
        for row in out["candidates"]:
            print("  ".join(f"{'' if row[c] is None else row[c]!s:>14}" for c in cols))
    print(json.dumps({k: v for k, v in out.items() if k != "candidates"}))
    return out


if __name__ == "__main__":
    main()
