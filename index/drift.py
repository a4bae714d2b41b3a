"""Drift: whether new vectors still fit an index's coarse quantizer, or its retrain is due.

``quantizer_drift``: the mean squared distance of new vectors to their nearest coarse centroid
over that of the vectors already in the index. Retrain the quantizer when it exceeds
DRIFT_THRESHOLD (1.5: new data sits 50% farther from the centroids than the data they were
trained on, so lists get unbalanced and recall at a fixed nprobe drops). For the reduced
graph the "quantizer" is its PCA: the squared distance of a vector to the data mean plus the
kept components (new data whose variance moved outside them is ranked worse by the graph).

``assets.retrieval.index_store`` rebuilds the index when it exceeds DRIFT_THRESHOLD; the other
retrain decision, N outgrowing the factory, is ``index.build.needs_rebuild``.
"""

from __future__ import annotations

import faiss
import numpy as np

from .build import check_xb_ids, sample_rows, unwrap_idmap

DRIFT_THRESHOLD = 1.5
DRIFT_SAMPLE = 20_000  # vectors on each side of a drift measurement, at most


def quantizer_drift(
    index: faiss.Index,
    xb_new: np.ndarray,
    xb_ref: np.ndarray | None = None,
    sample: int = DRIFT_SAMPLE,
    seed: int = 0,
) -> float:
    """Mean squared distance of xb_new to its nearest coarse centroid (the reduced graph: to
    its PCA projection) over that of a reference.

    Reference: ``xb_ref`` if given (e.g. the training sample), else a seeded sample of the
    vectors stored in the index (decoded from the inverted lists, or read from the refine
    stage). Flat and full-vector HNSW indexes have no quantizer to drift: returns 1.0.
    Compare with DRIFT_THRESHOLD. No new vectors (a batch of duplicates only): 1.0."""
    if len(xb_new) == 0:
        return 1.0
    pca = _pca(index)
    if pca is not None:
        new = check_xb_ids(xb_new, None)[0]
        if xb_ref is not None:
            ref = check_xb_ids(xb_ref, None)[0]
        else:
            store = faiss.downcast_index(unwrap_idmap(index)).refine_index
            ref = store.reconstruct_batch(sample_rows(store.ntotal, sample, seed))
        return _pca_residual(pca, new) / max(_pca_residual(pca, ref), 1e-12)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return 1.0
    new = _to_ivf_space(index, check_xb_ids(xb_new, None)[0])
    if xb_ref is not None:
        ref = _to_ivf_space(index, check_xb_ids(xb_ref, None)[0])
    else:
        # fast-scan lists pack codes in SIMD blocks: decoding one entry by offset is not supported
        assert not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan), (
            "a fast-scan index cannot decode its stored vectors: pass xb_ref (a sample of them)")
        ref = _stored_sample(ivf, sample, seed)
    return _quantization_error(ivf, new) / max(_quantization_error(ivf, ref), 1e-12)


def _pca(index: faiss.Index) -> faiss.PCAMatrix | None:
    """The PCA of a reduced graph (IndexRefine over PCA + HNSW), else None."""
    refine = unwrap_idmap(index)
    if not isinstance(refine, faiss.IndexRefine):
        return None
    base = faiss.downcast_index(refine.base_index)
    if not isinstance(base, faiss.IndexPreTransform):
        return None
    first = faiss.downcast_VectorTransform(base.chain.at(0))
    return first if isinstance(first, faiss.PCAMatrix) else None


def _pca_residual(pca: faiss.PCAMatrix, x: np.ndarray) -> float:
    """Mean squared distance of x to the PCA's affine subspace: the data mean plus the kept
    components. (faiss's ``reverse_transform`` projects without adding the mean back, so a
    mean outside the kept components would swamp both sides of the drift ratio.)"""
    rows = faiss.vector_to_array(pca.A).reshape(-1, pca.d_in)[: pca.d_out]
    basis = np.linalg.qr(rows.T.astype(np.float64))[0]  # orthonormal, also for a whitening PCA
    centred = x.astype(np.float64) - faiss.vector_to_array(pca.mean)
    return float(((centred - (centred @ basis) @ basis.T) ** 2).sum(axis=1).mean())


def _to_ivf_space(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """Apply the pre-transforms (OPQ rotation) so x lives where the centroids do."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            x = index.chain.at(i).apply_py(x)
    return x


def _stored_sample(ivf: faiss.IndexIVF, size: int, seed: int) -> np.ndarray:
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
    total = int(sizes.sum())
    assert total > 0, "index is empty: pass xb_ref to measure drift against the training sample"
    pos = sample_rows(total, size, seed)
    starts = np.cumsum(sizes) - sizes
    lists = np.searchsorted(np.cumsum(sizes), pos, side="right")
    out = np.empty((len(pos), ivf.d), dtype=np.float32)
    for j, (lst, p) in enumerate(zip(lists, pos, strict=True)):
        ivf.reconstruct_from_offset(int(lst), int(p - starts[lst]), faiss.swig_ptr(out[j]))
    return out


def _quantization_error(ivf: faiss.IndexIVF, x: np.ndarray) -> float:
    _, assign = ivf.quantizer.search(x, 1)
    centroids = ivf.quantizer.reconstruct_batch(assign.ravel())
    return float(((x - centroids) ** 2).sum(axis=1).mean())
