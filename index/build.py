"""The search space of FAISS indexes over L2-normalised embeddings (inner-product metric), and
building and growing them.

``candidate_factories(n, d, budget)`` lists the factories worth measuring for n vectors of
dimension d within a memory budget (bytes for the whole index; None = no limit);
``index.select.select_index`` builds each, tunes it and keeps the fastest that meets the
recall target. The space follows the FAISS wiki "Guidelines to choose an index":

    n (vectors)          candidates (in the order they are tried: cheapest build first)
    -------------------  --------------------------------------------------------------------
    n < 20,000           Flat                      exact, no training; nothing is faster enough
    20,000 <= n < 10M    IVF{k},Flat               full vectors in inverted lists
                         IVF{k},SQ8                8-bit scalar codes, d bytes/vector
                         IVF{k},PQ{d/2}x4fs,Refine(SQfp16)  4-bit PQ fast-scan (SIMD look-up
                                                   tables), then k_factor_rf * k hits re-ranked
                                                   on float16 vectors (half RFlat's memory,
                                                   the same recall and speed at 200k)
                         IVF{4k}_HNSW32,PQ{d/2}x4fs,Refine(SQfp16)  HNSW coarse quantizer
                                                   (n >= 500,000)
                         PCA{d/4},HNSW32_SQ8,RFlat graph over 8-bit codes of the top d/4
                                                   principal components, then k_factor_rf * k
                                                   hits re-ranked on the full vectors
                                                   (d >= 64, n < 2M; see "Reduced graphs")
                         HNSW32,Flat               graph, no training, exact distances
                                                   (n < 2M: its build grows fastest with n,
                                                   72 s at 1M x 128 on 2 cores)
    n >= 10M, or none    OPQ{m},IVF{4k},PQ{m}      m bytes/vector, the largest m | d that fits
      of the above fits

k = 2^round(log2(sqrt n)), clamped to [16, 65536] and to n/39 (faiss wants >= 39 training
points per list), for the families that keep full vectors or SQ8 codes. That is below the
wiki's 4..16 sqrt(n): on a small CPU box the k coarse
distances per query and the k-means training (which grows as k^2) cost more than longer
lists, most of all when the lists hold 4-bit fast-scan codes (bench/index.py at 200k x 128:
IVF512 reached 25x exact QPS, IVF2048 13x). The HNSW coarse quantizer makes many lists
cheap to probe, so its candidate uses 4k lists; OPQ+PQ (compressed, n >= 10M or a tight
budget) uses the wiki's 4 sqrt(n), and every IVF with k >= 32768 the HNSW quantizer.

Ids are ours: plain IVF indexes store them in the inverted lists; Flat, HNSW and refined
indexes get an IndexIDMap2. Every family grows in place (``add_vectors``): HNSW links the
new nodes into its graph, IVF appends to its lists, a refine stage appends to its store.

Reduced graphs: a graph search is bound by the ~500 random vector reads per query (200k x 128,
recall@10 0.95), not by arithmetic. Learned embeddings keep most of their variance in a few
directions (a trained demo encoder: 99% in 32 of 128), so a graph over d/4 principal
components in 8-bit codes reads 16x fewer bytes per hop, and the exact re-rank of the
k_factor_rf * k hits restores exact scores and order. On embeddings whose variance is spread
out the reduced ranking misses neighbours and the tuner rejects the candidate for recall.
PCA centres the data, which changes inner products but not L2 distances, so this family is
built with the L2 metric; on unit vectors L2 ranks exactly as inner product does, and
``index.search.search`` turns the distances back into inner products.

Retrain decision: ``needs_rebuild`` - N left the factory's family's range (the family is no
longer a candidate), k < half the list count its kind of IVF wants at N before rounding
(sqrt(N), or 4 sqrt(N) with an HNSW quantizer or OPQ, capped as k is: at most N/39: the lists
hold over 4x the vectors they were sized for), or the factory no longer fits the budget. The other, new data that no longer
fits the quantizer, is ``index.drift.quantizer_drift``.
"""

from __future__ import annotations

import logging
import math
import re

import faiss
import numpy as np

from .gpu import gpu_available, index_to_cpu, index_to_gpu
from .io import is_read_only

LOG = logging.getLogger(__name__)

FLAT_MAX_N = 20_000
HNSW_MAX_N = 2_000_000
IVF_HNSW_MIN_N = 500_000
IVF_FLAT_MAX_N = 10_000_000
HNSW_M = 32
HNSW_QUANTIZER_MIN_K = 32_768
MIN_TRAIN_PER_LIST = 39  # below this faiss warns and k-means is unreliable
TRAIN_PER_LIST = 64  # training sample size per list (faiss subsamples above 256)
MIN_TRAIN = 65_536  # PQ/OPQ codebooks want ~10k+ points whatever k is
MIN_NLIST = 16
MAX_NLIST = 65_536
COMPRESSED_PER_SQRT = 4  # lists per sqrt(n) for IVF with an HNSW quantizer, and for OPQ+PQ
PQ_M_CHOICES = (64, 48, 32, 24, 16, 12, 8, 4)
FAMILIES = ("flat", "hnsw", "hnsw_pca", "ivf_flat", "ivf_sq", "ivf_pq_refine", "ivf_pq")


def candidate_factories(n: int, d: int, memory_budget_bytes: int | None = None) -> list[str]:
    """Factory strings worth measuring for n vectors of dimension d (see the module table)."""
    assert n > 0 and d > 0, f"need n > 0 and d > 0, got n={n}, d={d}"
    budget = math.inf if memory_budget_bytes is None else memory_budget_bytes
    ivf = _ivf(_nlist(n))
    if n < FLAT_MAX_N and estimate_bytes("Flat", n, d) <= budget:
        return ["Flat"]
    if n < MIN_TRAIN_PER_LIST * MIN_NLIST:
        raise ValueError(
            f"memory_budget_bytes={memory_budget_bytes} cannot hold n={n} d={d} as Flat (~"
            f"{estimate_bytes('Flat', n, d)} bytes), and {n} vectors are too few to train a smaller "
            f"index (at least {MIN_TRAIN_PER_LIST * MIN_NLIST}): raise the budget"
        )
    space = []
    if n < IVF_FLAT_MAX_N:
        space += [f"{ivf},Flat", f"{ivf},SQ8"]
        if d % 2 == 0:
            space.append(f"{ivf},PQ{d // 2}x4fs,Refine(SQfp16)")
        if n >= IVF_HNSW_MIN_N and d % 2 == 0 and "HNSW" not in ivf:
            space.append(f"{_ivf(_nlist(n, COMPRESSED_PER_SQRT), hnsw=True)},PQ{d // 2}x4fs,Refine(SQfp16)")
        if n < HNSW_MAX_N and d >= 64 and d % 4 == 0:
            space.append(f"PCA{d // 4},HNSW{HNSW_M}_SQ8,RFlat")
        if n < HNSW_MAX_N:
            space.append(f"HNSW{HNSW_M},Flat")
    space = [f for f in space if estimate_bytes(f, n, d) <= budget]
    if space:
        return space
    ivf = _ivf(_nlist(n, COMPRESSED_PER_SQRT))  # compressed codes scan cheaply: the wiki's 4 sqrt(n) lists
    ms = [m for m in PQ_M_CHOICES if d % m == 0 and m <= d // 2]
    ms = [m for m in ms if estimate_bytes(f"OPQ{m},{ivf},PQ{m}", n, d) <= budget]
    if not ms:
        need = estimate_bytes(f"OPQ4,{ivf},PQ4", n, d)
        raise ValueError(
            f"memory_budget_bytes={memory_budget_bytes} cannot hold n={n} d={d}: the smallest "
            f"option OPQ4,{ivf},PQ4 needs ~{need} bytes; valid PQ m divide d and are in {PQ_M_CHOICES}"
        )
    return [f"OPQ{ms[0]},{ivf},PQ{ms[0]}"]


def estimate_bytes(factory: str, n: int, d: int) -> int:
    """Rough RAM of an index: codes + ids + graph links + coarse centroids (+ OPQ matrix)."""
    fam = family(factory)
    k = _factory_nlist(factory)
    fixed = 4 * d * k + (4 * d * d if factory.startswith(("OPQ", "PCA")) else 0)
    idmap = 8 + 40  # IDMap2 keeps ids and a reverse hash map
    if fam == "flat":
        per = 4 * d + idmap
    elif fam == "hnsw":
        per = 4 * d + idmap + _hnsw_link_bytes(factory)
    elif fam == "hnsw_pca":  # 8-bit codes of the reduced vectors + links + RFlat's full vectors
        per = _pca_dim(factory) + _hnsw_link_bytes(factory) + 4 * d + idmap
    elif fam == "ivf_flat":
        per = 4 * d + 8
    elif fam == "ivf_sq":
        per = d + 8
    elif fam == "ivf_pq_refine":  # 4-bit codes + list ids + the refine's store + IDMap2
        per = (_pq_m(factory) + 1) // 2 + 8 + _refine_bytes(factory, d) + idmap
    else:
        per = _pq_m(factory) + 8
    return int(fixed + per * n)


def family(factory: str) -> str:
    """Family of a factory string: one of FAMILIES."""
    body = factory.removeprefix("IDMap2,").removeprefix("IDMap,")
    if "IVF" in body:
        codes = body.split("IVF", 1)[1]
        if "PQ" in codes:
            return "ivf_pq_refine" if "RFlat" in codes or "Refine(" in codes else "ivf_pq"
        return "ivf_sq" if "SQ" in codes else "ivf_flat"
    if body.startswith("HNSW"):
        return "hnsw"
    if body.startswith("PCA") and "HNSW" in body:
        return "hnsw_pca"
    if body == "Flat":
        return "flat"
    raise ValueError(f"unknown factory family for {factory!r}; valid families: {FAMILIES}")


def needs_rebuild(
    factory: str, n_total: int, d: int, memory_budget_bytes: int | None = None
) -> bool:
    """True when an index built with ``factory`` should be rebuilt now that it holds n_total.

    Pass the memory budget that chose ``factory``: the search space depends on it."""
    space = candidate_factories(n_total, d, memory_budget_bytes)
    if family(factory) not in {family(f) for f in space}:
        return True
    if (
        memory_budget_bytes is not None
        and estimate_bytes(factory, n_total, d) > memory_budget_bytes
    ):
        return True
    if family(factory).startswith("ivf"):
        per_sqrt = COMPRESSED_PER_SQRT if "_HNSW" in factory or factory.startswith("OPQ") else 1
        return _wanted_nlist(n_total, per_sqrt) > 2 * _factory_nlist(factory)
    return False


def build_index(
    xb: np.ndarray,
    ids: np.ndarray,
    factory: str,
    use_gpu: bool | None = None,
    xt: np.ndarray | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Build a CPU index of ``factory`` holding xb under ``ids`` (int64).

    Training (IVF, PQ, OPQ) uses ``xt`` if given, else a seeded sample of xb of
    max(TRAIN_PER_LIST * k, MIN_TRAIN) rows. use_gpu: None = when available, True = try
    (falls back to CPU with a warning), False = CPU. On GPU the train + add run there and
    the result is copied back so it can be written; types faiss cannot run on GPU (HNSW)
    stay on the CPU."""
    xb, ids = check_xb_ids(xb, ids)
    index = make_empty(factory, xb.shape[1])
    if use_gpu is None:
        use_gpu = gpu_available()
    elif use_gpu and not gpu_available():
        LOG.warning("use_gpu=True but faiss has no GPU support or sees no GPU; building on CPU")
    work = index_to_gpu(index) if use_gpu else index
    if not work.is_trained:
        xt = check_xb_ids(xt, None)[0] if xt is not None else training_sample(index, xb, seed)
        LOG.info("training %s on %d vectors", factory, len(xt))
        work.train(xt)
    work.add_with_ids(xb, ids)
    return index_to_cpu(work) if work is not index else index


def make_empty(factory: str, d: int) -> faiss.Index:
    """Empty index for ``factory``: inner product, but L2 for the PCA family (see "Reduced
    graphs"); Flat, HNSW and refined ones get an IndexIDMap2."""
    fam = family(factory)  # validates
    if fam in ("flat", "hnsw", "hnsw_pca", "ivf_pq_refine") and not factory.startswith("IDMap"):
        factory = "IDMap2," + factory
    metric = faiss.METRIC_L2 if fam == "hnsw_pca" else faiss.METRIC_INNER_PRODUCT
    try:
        index = faiss.index_factory(d, factory, metric)
    except RuntimeError as e:
        raise ValueError(f"faiss cannot build factory {factory!r} with d={d}: {e}") from e
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        # polysemous training (on by default for "PQm") is an annealing that takes ~1 min even
        # on 4k vectors and only serves Hamming pre-filtering ("ht"), which tune does not use
        faiss.downcast_index(ivf).do_polysemous_training = False
    return index


def training_sample(index: faiss.Index, xb: np.ndarray, seed: int = 0) -> np.ndarray:
    """Seeded sample of xb sized for training ``index`` (all of xb when it is small)."""
    ivf = faiss.try_extract_index_ivf(index)
    k = ivf.nlist if ivf is not None else 1
    if ivf is not None and len(xb) < MIN_TRAIN_PER_LIST * k:
        LOG.warning(
            "only %d training vectors for %d lists (want >= %d)", len(xb), k, MIN_TRAIN_PER_LIST * k
        )
    size = min(len(xb), max(TRAIN_PER_LIST * k, MIN_TRAIN))
    if size == len(xb):
        return xb
    return xb[sample_rows(len(xb), size, seed)]


def add_vectors(index: faiss.Index, xb: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Add new vectors under new ids to a trained index; nothing is retrained or re-added."""
    xb, ids = check_xb_ids(xb, ids)
    assert index.is_trained, "index is not trained; build it with build_index first"
    assert index.d == xb.shape[1], f"index d={index.d} but vectors have d={xb.shape[1]}"
    # adding to a read-only mmap view aborts the whole process inside faiss, so refuse here
    assert not is_read_only(index), (
        "index was opened with read_index(mmap=True); reopen with mmap=False to add"
    )
    index.add_with_ids(xb, ids)
    return index


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded sample of min(size, n) of range(n), as int64 row ids."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False)).astype(np.int64)


def unwrap_idmap(index: faiss.Index) -> faiss.Index:
    """The index under an IndexIDMap / IndexIDMap2 (itself when there is none), downcast."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    return index


def _ivf(k: int, hnsw: bool = False) -> str:
    """The IVF part of a factory: k lists, with an HNSW coarse quantizer when asked or k is large."""
    return f"IVF{k}_HNSW32" if hnsw or k >= HNSW_QUANTIZER_MIN_K else f"IVF{k}"


def _wanted_nlist(n: int, per_sqrt: int = 1) -> float:
    """The list count an IVF over n vectors wants before rounding: per_sqrt sqrt(n), at most
    MAX_NLIST and n / MIN_TRAIN_PER_LIST."""
    return min(per_sqrt * math.sqrt(n), MAX_NLIST, n / MIN_TRAIN_PER_LIST)


def _nlist(n: int, per_sqrt: int = 1) -> int:
    k = 2 ** round(math.log2(per_sqrt * math.sqrt(n)))
    k = min(k, MAX_NLIST, 2 ** int(math.log2(max(MIN_NLIST, n // MIN_TRAIN_PER_LIST))))
    return max(MIN_NLIST, k)


def _factory_nlist(factory: str) -> int:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else 0


def _hnsw_link_bytes(factory: str) -> int:
    """Graph links per vector: level 0 holds 2M int32, the upper levels ~10% more."""
    m = int(re.search(r"HNSW(\d+)", factory).group(1))
    return int(2 * m * 4 * 1.1)


def _pca_dim(factory: str) -> int:
    return int(re.match(r"PCA(\d+)", factory.removeprefix("IDMap2,")).group(1))


def _refine_bytes(factory: str, d: int) -> int:
    """Bytes per vector of a refine stage: RFlat / Refine(Flat) 4d, Refine(SQfp16) 2d, Refine(SQ8) d."""
    m = re.search(r"Refine\((\w+)\)", factory)
    kind = "Flat" if m is None else m.group(1)
    return {"Flat": 4 * d, "SQfp16": 2 * d, "SQbf16": 2 * d, "SQ8": d}[kind]


def _pq_m(factory: str) -> int:
    m = re.search(r"PQ(\d+)", factory.split("IVF", 1)[-1])
    assert m, f"no PQ code size in factory {factory!r}"
    return int(m.group(1))


def check_xb_ids(xb, ids):
    """(xb as contiguous float32 (n, d), ids as contiguous int64 (n,) or None); asserts the shapes."""
    assert xb is not None and xb.ndim == 2, (
        f"vectors must be (n, d), got {getattr(xb, 'shape', None)}"
    )
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if ids is not None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        assert ids.shape == (len(xb),), f"ids shape {ids.shape} != ({len(xb)},)"
    return xb, ids
