"""Thread settings for faiss and torch sharing a process, and fork safety.

Why: the faiss-cpu and torch wheels each bundle their own GNU OpenMP (libgomp). libgomp is
not fork-safe: once a parent has run a parallel region, its worker threads exist only in
the parent, and a forked child that enters a parallel region with more than one thread
waits for them forever. On this project's box, a child forked after the parent ran a faiss
search (Flat or IVF) or a torch matmul hangs on its first faiss search / torch matmul;
with 1 thread in the child it finishes (tests/index/test_threads.py checks the fix).

What ``configure_threads`` does:
  * sets faiss's OpenMP threads (``faiss.omp_set_num_threads``) and, if torch is already
    imported, torch's intra-op threads to n (default: the CPUs this process may use). The
    two pools are separate, so faiss and torch each use all cores but must not run
    concurrently in one process (that would oversubscribe the cores 2x);
  * registers, once, an ``os.register_at_fork`` hook that sets both to ``child_threads``
    (default 1) in every forked child, so a fork cannot hang.

numpy's BLAS is a third pool, outside ``configure_threads``: the numpy wheel's OpenBLAS runs
its own pthreads, which keep spinning for a while (tens of ms) after each call. A faiss
search started in that window shares the cores with them and can take twice as long. Code
that alternates numpy matmuls with faiss searches in a loop should batch each kind, or run
the matmul on one BLAS thread (``threadpoolctl.threadpool_limits(1, user_api="blas")``).

Recommendations: prefer the "spawn" or "forkserver" start method for worker pools that use
faiss or torch (a fresh interpreter has no OpenMP state; Dagster's multiprocess executor defaults
to spawn for its step processes). When fork is unavoidable (DataLoader workers, fork-based
pools), the hook keeps children single-threaded; a child may raise its own thread count
only for code that never touches a pool the parent already started.
"""

from __future__ import annotations

import os
import sys

import faiss

_HOOK = {"registered": False, "child_threads": 1}


def usable_cpus() -> int:
    """CPUs this process may run on (affinity / cgroup cpuset aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configure_threads(n: int | None = None, child_threads: int = 1) -> int:
    """Set faiss (and torch, if imported) to n threads; forked children get child_threads.

    Returns the thread count set in this process."""
    n = usable_cpus() if n is None else n
    assert n >= 1 and child_threads >= 1, (
        f"need n >= 1 and child_threads >= 1, got {n}, {child_threads}"
    )
    _set_all(n)
    _HOOK["child_threads"] = child_threads
    if not _HOOK["registered"] and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _set_all(_HOOK["child_threads"]))
        _HOOK["registered"] = True
    return n


def worker_init(n: int = 1) -> None:
    """Initializer for process pools (``ProcessPoolExecutor(initializer=worker_init)``)."""
    configure_threads(n, child_threads=1)


def _set_all(n: int) -> None:
    faiss.omp_set_num_threads(n)
    torch = sys.modules.get("torch")  # do not import torch just to configure it
    if torch is not None:
        torch.set_num_threads(n)
