# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

import faiss
import numpy as np
import pytest

from index.build import (
    add_vectors,
    build_index,
    candidate_factories,
    estimate_bytes,
    family,
    make_empty,
    needs_rebuild,
)
from index.drift import DRIFT_THRESHOLD, quantizer_drift
from index.metrics import exact_knn, recall_at_k, rescore, synthetic_clustered
from index.search import search


@pytest.mark.parametrize(
    "n, d, budget, want",
    [
        (1_000, 128, None, ["Flat"]),
        (19_999, 128, None, ["Flat"]),
        (50_000, 128, None, ["IVF256,Flat", "IVF256,SQ8", "IVF256,PQ64x4fs,Refine(SQfp16)",
                             "PCA32,HNSW32_SQ8,RFlat", "HNSW32,Flat"]),
        # 30 MB: the flat codes (26 MB) and the refined fast-scan (17 MB) fit, the graphs do not
        (50_000, 128, 30_000_000, ["IVF256,Flat", "IVF256,SQ8", "IVF256,PQ64x4fs,Refine(SQfp16)"]),
        (50_000, 128, 15_000_000, ["IVF256,SQ8"]),  # 7 MB
        (200_000, 128, None, ["IVF512,Flat", "IVF512,SQ8", "IVF512,PQ64x4fs,Refine(SQfp16)",
                              "PCA32,HNSW32_SQ8,RFlat", "HNSW32,Flat"]),
        (200_000, 32, None, ["IVF512,Flat", "IVF512,SQ8", "IVF512,PQ16x4fs,Refine(SQfp16)", "HNSW32,Flat"]),
        (1_000_000, 128, None, ["IVF1024,Flat", "IVF1024,SQ8", "IVF1024,PQ64x4fs,Refine(SQfp16)",
                                "IVF4096_HNSW32,PQ64x4fs,Refine(SQfp16)", "PCA32,HNSW32_SQ8,RFlat",
                                "HNSW32,Flat"]),
        (1_000_000, 128, 150_000_000, ["IVF1024,SQ8"]),  # 136 B/vector
        (1_000_000, 128, 50_000_000, ["OPQ32,IVF4096,PQ32"]),  # 50 B/vector budget
        (20_000_000, 128, None, ["OPQ64,IVF16384,PQ64"]),
        (100_000_000, 128, None, ["OPQ64,IVF32768_HNSW32,PQ64"]),
        (200_000, 96, 8_000_000, ["OPQ24,IVF2048,PQ24"]),
    ],
)
def test_candidate_factories_table(n, d, budget, want):
    assert candidate_factories(n, d, budget) == want
    for factory in want:
        make_empty(factory, d)  # faiss can build it


def test_candidate_factories_errors_name_the_budget():
    with pytest.raises(ValueError, match="memory_budget_bytes=1000"):
        candidate_factories(1_000_000, 128, 1000)
    with pytest.raises(ValueError, match="valid families"):
        family("LSH")


def test_needs_rebuild():
    assert needs_rebuild("Flat", 30_000, 128)
    assert not needs_rebuild("Flat", 10_000, 128)
    assert not needs_rebuild("HNSW32,Flat", 150_000, 128)
    assert not needs_rebuild("HNSW32,Flat", 1_500_000, 128)
    assert needs_rebuild("HNSW32,Flat", 2_500_000, 128)  # the graph left the search space
    assert not needs_rebuild("PCA32,HNSW32_SQ8,RFlat", 1_500_000, 128)
    assert needs_rebuild("PCA32,HNSW32_SQ8,RFlat", 2_500_000, 128)
    assert not needs_rebuild("IVF512,Flat", 250_000, 128)
    # 512 lists are sized for 512^2 = 262k vectors: rebuilt once the lists hold over 4x that
    assert not needs_rebuild("IVF512,PQ64x4fs,Refine(SQfp16)", 1_000_000, 128)
    assert needs_rebuild("IVF512,PQ64x4fs,Refine(SQfp16)", 1_100_000, 128)
    assert needs_rebuild("IVF512,SQ8", 4_000_000, 128)
    # an HNSW quantizer's 4096 lists and OPQ's 16384 are sized for (k / 4)^2 vectors
    hnsw_ivf = "IVF4096_HNSW32,PQ64x4fs,Refine(SQfp16)"
    assert not needs_rebuild(hnsw_ivf, 4_000_000, 128) and needs_rebuild(hnsw_ivf, 4_500_000, 128)
    assert not needs_rebuild("OPQ64,IVF16384_HNSW32,PQ64", 60_000_000, 128)
    assert needs_rebuild("OPQ64,IVF16384_HNSW32,PQ64", 70_000_000, 128)
    assert not needs_rebuild("OPQ64,IVF65536_HNSW32,PQ64", 10**10, 128)  # at the most lists: no rebuild loop
    assert needs_rebuild("IVF512,Flat", 1_000_000, 128, memory_budget_bytes=100_000_000)


@pytest.mark.parametrize("share", [None, 0.5, 0.2, 0.05])
def test_an_index_just_chosen_is_not_due_for_a_rebuild(share):
    """Under a budget that rules Flat out, small catalogs get IVF lists capped at n/39: the
    rebuild rule caps what it wants the same way, or every update would rebuild."""
    for d in (64, 128):
        for n in sorted({int(v) for v in np.logspace(2.8, 7.5, 120)} | {1100, 1247, 5000, 19_000}):
            budget = None if share is None else int(share * estimate_bytes("Flat", n, d))
            try:
                space = candidate_factories(n, d, budget)
            except ValueError:  # nothing fits the budget
                continue
            assert not [f for f in space if needs_rebuild(f, n, d, budget)], (n, d, budget, space)
    # growth still rebuilds: IVF16 chosen at 1,100 vectors wants 33 lists at 1,300
    assert not needs_rebuild("IVF16,SQ8", 1_247, 16, 10**5) and needs_rebuild("IVF16,SQ8", 1_300, 16, 10**5)


def test_too_few_vectors_for_anything_but_flat_over_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="15 vectors are too few to train a smaller index"):
        candidate_factories(15, 16, int(0.9 * estimate_bytes("Flat", 15, 16)))


@pytest.mark.parametrize(
    "factory, params", [("HNSW32", {"efSearch": 64}), ("IVF64,Flat", {"nprobe": 8})]
)
def test_approximate_recall_vs_exact(data, factory, params):
    index = build_index(data["xb"], data["ids"], factory)
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, value)
    _, I = index.search(data["xq"], 10)
    assert recall_at_k(I, data["gt_I"], 10) >= 0.9
    assert I.min() >= 10_000, "ids must be ours, not row numbers"


@pytest.mark.parametrize(
    "factory", ["Flat", "IVF64,Flat", "IVF32,PQ8x4", "IVF64,SQ8", "IVF64,PQ16x4fs,RFlat",
                "IVF64,PQ16x4fs,Refine(SQfp16)"]
)
def test_incremental_adds_equal_full_build(data, factory):
    xb, ids, xq = data["xb"], data["ids"], data["xq"]
    xt = xb[:4000]  # same training set for both, so the quantizers are identical
    inc = build_index(xb[:4000], ids[:4000], factory, xt=xt)
    add_vectors(inc, xb[4000:5000], ids[4000:5000])
    add_vectors(inc, xb[5000:], ids[5000:])
    full = build_index(xb, ids, factory, xt=xt)
    assert inc.ntotal == full.ntotal == len(xb)
    for index in (inc, full):
        faiss.ParameterSpace().set_index_parameters(index, "nprobe=4" if "IVF" in factory else "")
        if "Refine" in factory or "RFlat" in factory:
            faiss.ParameterSpace().set_index_parameters(index, "k_factor_rf=4")
    D1, I1 = inc.search(xq, 10)
    D2, I2 = full.search(xq, 10)
    np.testing.assert_allclose(D1, D2, rtol=1e-5, atol=1e-6)
    assert (I1 == I2).mean() > 0.99  # equal up to the order of exact ties


def test_hnsw_incremental_keeps_recall(data):
    xb, ids = data["xb"], data["ids"]
    index = build_index(xb[:3000], ids[:3000], "HNSW32,Flat")
    add_vectors(index, xb[3000:], ids[3000:])
    faiss.ParameterSpace().set_index_parameter(index, "efSearch", 64)
    assert recall_at_k(index.search(data["xq"], 10)[1], data["gt_I"], 10) >= 0.9


def test_reduced_graph_returns_exact_inner_products_and_grows_in_place():
    """The PCA graph is an L2 index; search() still gives the exact inner products, best first."""
    rng = np.random.default_rng(0)  # unit vectors whose variance lies in 12 of 64 directions
    x = rng.normal(size=(6200, 12)) @ rng.normal(size=(12, 64)) + 0.05 * rng.normal(size=(6200, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")
    xb, xq, ids = x[:6000], x[6000:], np.arange(6000, dtype=np.int64) + 10_000
    factory = candidate_factories(50_000, 64)[3]
    assert factory == "PCA16,HNSW32_SQ8,RFlat" and family(factory) == "hnsw_pca"
    index = build_index(xb[:3000], ids[:3000], factory)
    add_vectors(index, xb[3000:], ids[3000:])
    assert index.metric_type == faiss.METRIC_L2 and index.ntotal == 6000
    faiss.ParameterSpace().set_index_parameters(index, "efSearch=64,k_factor_rf=4")
    D, I = search(index, xq, 10)
    gt_D, gt_I = exact_knn(xb, xq, 10)
    assert recall_at_k(I - 10_000, gt_I, 10) >= 0.95
    np.testing.assert_allclose(D, rescore(xq, xb, I - 10_000), atol=1e-5)
    assert (np.diff(D, axis=1) <= 1e-6).all(), "best first, as for inner-product indexes"
    D, I = search(index, xq[:2], 7000)  # more than it holds: the rest is missing
    assert (I[:, 6000:] == -1).all() and np.isneginf(D[:, 6000:]).all()
    # drift: new vectors from the same 12 directions keep their variance in the PCA; vectors
    # from 12 other directions do not
    same = quantizer_drift(index, xq)
    other = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 64))
    other = (other / np.linalg.norm(other, axis=1, keepdims=True)).astype("float32")
    assert 0.5 < same < 1.5 and quantizer_drift(index, other) > DRIFT_THRESHOLD, (same, quantizer_drift(index, other))
    assert quantizer_drift(index, xq, xb_ref=xb[:1000]) == pytest.approx(same, rel=0.25)


def test_reduced_graph_drift_is_measured_from_the_data_mean():
    """Unit vectors share a common direction outside the kept components (as embeddings
    often do): new vectors with 5x the variance off those components are drift, the
    common direction is not."""
    rng = np.random.default_rng(0)
    d = 128
    mean = rng.normal(size=d)
    mean /= np.linalg.norm(mean)
    signal = np.linalg.qr(np.c_[mean, rng.normal(size=(d, 32))])[0][:, 1:].T  # 32 dims orthogonal to it

    def vectors(n, noise):
        x = 0.7 * mean + 0.7 * rng.normal(size=(n, 32)) @ signal / np.sqrt(32) + noise * rng.normal(size=(n, d)) / np.sqrt(d)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")

    xb = vectors(3000, 0.1)
    index = build_index(xb, np.arange(3000, dtype=np.int64), "PCA32,HNSW32_SQ8,RFlat", use_gpu=False)
    same, wider = quantizer_drift(index, vectors(1000, 0.1)), quantizer_drift(index, vectors(1000, 0.3))
    assert 0.8 < same < 1.2 and wider > DRIFT_THRESHOLD, (same, wider)


def test_add_vectors_checks_inputs(data):
    index = build_index(data["xb"][:100], data["ids"][:100], "Flat")
    with pytest.raises(AssertionError, match="d=16"):
        add_vectors(index, np.zeros((2, 16), "float32"), np.array([1, 2]))
    with pytest.raises(AssertionError, match="ids shape"):
        add_vectors(index, data["xb"][:2], np.array([1]))


def test_quantizer_drift(data):
    xb, ids = data["xb"], data["ids"]
    index = build_index(xb[:5000], ids[:5000], "IVF64,Flat")
    same = quantizer_drift(index, xb[5000:])
    shifted = synthetic_clustered(1000, xb.shape[1], n_clusters=20, seed=99)  # new centres
    moved = quantizer_drift(index, shifted)
    assert 0.8 < same < 1.2, same
    assert moved > DRIFT_THRESHOLD, moved
    assert quantizer_drift(index, xb[5000:], xb_ref=xb[:5000]) == pytest.approx(same, rel=0.1)
    assert quantizer_drift(build_index(xb[:100], ids[:100], "Flat"), shifted) == 1.0
    assert quantizer_drift(index, xb[:0]) == 1.0  # a batch of duplicates only adds nothing (was nan)
