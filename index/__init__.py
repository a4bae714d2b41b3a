"""FAISS in the faiss-contrib style: build, tune, search, io, metrics. No Dagster here."""

from .build import add_vectors, build_index, candidate_factories, needs_rebuild
from .drift import quantizer_drift
from .gpu import gpu_available, index_to_cpu, index_to_gpu
from .io import read_index, write_index_atomic
from .metrics import exact_knn, one_recall_at_k, recall_at_k
from .search import ids_to_keys, search
from .threads import configure_threads
from .tune import TuneResult, apply_params, tune_index

__all__ = [
    "TuneResult",
    "add_vectors",
    "apply_params",
    "build_index",
    "candidate_factories",
    "configure_threads",
    "exact_knn",
    "gpu_available",
    "ids_to_keys",
    "index_to_cpu",
    "index_to_gpu",
    "needs_rebuild",
    "one_recall_at_k",
    "quantizer_drift",
    "read_index",
    "recall_at_k",
    "search",
    "tune_index",
    "write_index_atomic",
]
