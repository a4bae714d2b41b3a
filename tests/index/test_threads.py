"""torch and faiss in one process, then faiss from a forked child: must not hang.

Without the at-fork hook the child's first faiss search (or torch matmul) waits forever
for OpenMP worker threads that exist only in the parent (seen on this project's box)."""

# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

import multiprocessing as mp

import faiss
import numpy as np
import pytest

from index.search import search
from index.threads import configure_threads, usable_cpus

torch = pytest.importorskip("torch")


def test_fork_after_torch_and_faiss_does_not_hang(data):
    n = configure_threads(2)
    assert n == 2 and faiss.omp_get_max_threads() == 2
    a = torch.randn(256, 256)
    (a @ a).sum().item()  # starts torch's OpenMP pool
    index = faiss.index_factory(data["xb"].shape[1], "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(data["xb"])
    index.add(data["xb"])
    index.nprobe = 8
    _, I_parent = search(index, data["xq"], 10)  # starts faiss's OpenMP pool

    ctx = mp.get_context("fork")
    out = ctx.Queue()

    def child():
        _, I = search(index, data["xq"], 10)
        (a @ a).sum().item()
        out.put((faiss.omp_get_max_threads(), I))

    p = ctx.Process(target=child)
    p.start()
    p.join(timeout=60)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("forked child hung in faiss/torch (OpenMP after fork)")
    assert p.exitcode == 0
    child_threads, I_child = out.get(timeout=5)
    assert child_threads == 1
    np.testing.assert_array_equal(I_child, I_parent)
    assert faiss.omp_get_max_threads() == 2, "the hook must not touch the parent"


def test_usable_cpus_and_bad_values():
    assert usable_cpus() >= 1
    with pytest.raises(AssertionError, match="n >= 1"):
        configure_threads(0)
