"""Benchmark the faiss GPU path against the CPU, side by side in one run.

    python bench/index_gpu.py --n 1000000 --d 128 [--factory IVF4096,Flat] [--json]

For each factory (default: Flat, IVF4096,Flat, IVF4096,SQ8), on the same synthetic
clustered vectors (``synthetic_clustered``) and held-out queries:
  1. build: ``index.build.build_index`` with ``use_gpu=False`` and ``use_gpu=True`` (train and
     add on the GPU, copied back to the CPU), timed once each, CPU first;
  2. recall@k of both builds at ``--nprobe`` against exact search, searched on the CPU: the GPU
     build must be as good an index as the CPU one;
  3. batch search QPS of the CPU build on the CPU against the same index moved to the GPU
     (``index_to_gpu``), interleaved ``--repeats`` times (models/timing.py), with the GPU
     clock stopped after its kernels; the GPU copy's own recall@k.

Needs faiss-gpu and a GPU (exits 2 without). Prints a table, then ONE JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

if __package__ in (None, ""):  # run as a script: bench/ is sys.path[0] and its index.py
    _here = os.path.dirname(os.path.abspath(__file__))  # would shadow the index package
    sys.path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from index.build import build_index  # noqa: E402
from index.gpu import gpu_available, index_to_gpu, is_gpu_index  # noqa: E402
from index.metrics import exact_knn, recall_at_k, synthetic_clustered  # noqa: E402
from index.tune import apply_params  # noqa: E402
from models.timing import interleaved, summarise  # noqa: E402

DEFAULT_FACTORIES = ("Flat", "IVF4096,Flat", "IVF4096,SQ8")


def run(a: argparse.Namespace) -> dict:
    x = synthetic_clustered(a.n + a.nq, a.d, seed=a.seed)
    xb, xq = x[: a.n], x[a.n :]
    ids = np.arange(a.n, dtype=np.int64)
    t0 = time.perf_counter()
    gt = exact_knn(xb, xq, a.k, knn=partial(faiss.knn_gpu, faiss.StandardGpuResources()))[1]
    rows = []
    print(f"{a.n} x {a.d}, {a.nq} queries, k={a.k}, nprobe={a.nprobe}; exact ground truth on the GPU {time.perf_counter() - t0:.1f} s"
          f"; faiss {faiss.__version__}, {faiss.get_num_gpus()} GPU(s), {faiss.omp_get_max_threads()} CPU threads",
          flush=True)  # fmt: skip
    for factory in a.factory or DEFAULT_FACTORIES:
        params = f"nprobe={a.nprobe}" if "IVF" in factory else ""
        built, build_s = {}, {}
        for where in ("cpu", "gpu"):
            t0 = time.perf_counter()
            built[where] = build_index(xb, ids, factory, use_gpu=where == "gpu", seed=a.seed)
            build_s[where] = time.perf_counter() - t0
            print(f"  {factory}: built on the {where.upper()} in {build_s[where]:.1f} s", flush=True)
        recall = {}
        for where, index in built.items():
            apply_params(index, params)
            recall[f"{where}_build"] = recall_at_k(index.search(xq, a.k)[1], gt, a.k)
        on_gpu = index_to_gpu(built["cpu"])
        if not is_gpu_index(on_gpu):
            raise SystemExit(f"{factory}: faiss did not move the index to the GPU")
        apply_params(on_gpu, params)
        recall["gpu_search"] = recall_at_k(on_gpu.search(xq, a.k)[1], gt, a.k)
        # a GPU search returns host arrays, so it has waited for its kernels when it returns
        times = interleaved({"cpu": partial(built["cpu"].search, xq, a.k), "gpu": partial(on_gpu.search, xq, a.k)},
                            repeats=a.repeats)
        qps = {w: summarise([a.nq / s for s in t]) for w, t in times.items()}
        row = {"factory": factory, "build_s": build_s, "build_speedup": build_s["cpu"] / build_s["gpu"],
               "recall_at_k": recall, "qps": qps, "search_speedup": qps["gpu"]["median"] / qps["cpu"]["median"]}  # fmt: skip
        rows.append(row)
        print(f"  {factory}: build {build_s['cpu']:.1f} s CPU / {build_s['gpu']:.1f} s GPU = {row['build_speedup']:.1f}x;"
              f" QPS {qps['cpu']['median']:,.0f} CPU / {qps['gpu']['median']:,.0f} GPU = {row['search_speedup']:.1f}x"
              f" (spread {qps['gpu']['min']:,.0f}-{qps['gpu']['max']:,.0f}); recall@{a.k}"
              f" CPU build {recall['cpu_build']:.3f}, GPU build {recall['gpu_build']:.3f}, on the GPU {recall['gpu_search']:.3f}",
              flush=True)  # fmt: skip
    return {"n": a.n, "d": a.d, "nq": a.nq, "k": a.k, "nprobe": a.nprobe, "faiss": faiss.__version__, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--factory", action="append", help="factories to compare (repeatable)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    a = p.parse_args(argv)
    if not gpu_available():
        print("faiss has no GPU support or sees no GPU: nothing to compare", file=sys.stderr)
        raise SystemExit(2)
    if a.json:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    out = run(a)
    sys.stdout = sys.__stdout__
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
