"""Executor choice: multiprocess on one machine, a pod per step on Kubernetes.

`LENSLESS_EXECUTOR=k8s` selects dagster-k8s's `k8s_job_executor` (from the `scale` extra);
the training assets carry `assets.compute.GPU_STEP_TAGS`, so their pods request a GPU. Anything else
(the default) uses Dagster's multiprocess executor, whose child processes are spawned, not
forked, so faiss/torch OpenMP state is never inherited (see index/threads.py).
"""

import os

import dagster as dg

EXECUTORS = ("multiprocess", "k8s")

def executor():
    """The executor named by `LENSLESS_EXECUTOR` (default multiprocess)."""
    name = os.environ.get("LENSLESS_EXECUTOR", "multiprocess")
    if name not in EXECUTORS:
        raise ValueError(f"Unknown LENSLESS_EXECUTOR {name!r}; valid: {', '.join(EXECUTORS)}")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.multiprocess_executor.configured({"max_concurrent": int(os.environ.get("LENSLESS_MAX_CONCURRENT_STEPS", "2"))})
