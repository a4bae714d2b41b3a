"""GPU placement with CPU fallback.

The GPU is used when the installed faiss has GPU support (``faiss.StandardGpuResources``
exists, i.e. a faiss-gpu build) and ``faiss.get_num_gpus() > 0``. Otherwise every function
here is a no-op that returns the CPU index, so callers never branch on hardware.

Index types moved to the GPU: Flat, IVF-Flat, IVF-PQ and IVF-SQ (possibly under IndexIDMap
or an OPQ pre-transform), the ones faiss implements on GPU. HNSW has no faiss GPU
implementation (only a CAGRA conversion in cuVS builds), so HNSW indexes and IVF indexes
with an HNSW coarse quantizer stay on the CPU. A clone faiss refuses at run time (e.g. a PQ
code size the GPU kernels do not support) also falls back to the CPU, with a warning.
"""

from __future__ import annotations

import logging

import faiss

LOG = logging.getLogger(__name__)

GPU_TYPES = ("IndexFlat", "IndexIVFFlat", "IndexIVFPQ", "IndexIVFScalarQuantizer")
_RESOURCES: list = []  # one StandardGpuResources per process; it owns scratch memory


def gpu_available() -> bool:
    """True when faiss is a GPU build and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def gpu_supported(index: faiss.Index) -> bool:
    """True when faiss can run this index (after unwrapping IDMap / pre-transforms) on GPU."""
    core = _core(index)
    if not isinstance(core, tuple(getattr(faiss, t) for t in GPU_TYPES)):
        return False
    ivf = faiss.try_extract_index_ivf(core)
    return ivf is None or isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat)


def is_gpu_index(index: faiss.Index) -> bool:
    """True for an index that lives on a GPU, also under an IDMap or a pre-transform: faiss's
    cloner moves only the core of ``IDMap2,Flat`` or ``OPQ..,IVF..,PQ..`` to the GPU and keeps
    the wrapper on the CPU."""
    return hasattr(faiss, "GpuIndex") and isinstance(_core(index), faiss.GpuIndex)


def index_to_gpu(index: faiss.Index, device: int = 0) -> faiss.Index:
    """Copy a CPU index to GPU ``device`` when possible; otherwise return it unchanged."""
    if not gpu_available() or is_gpu_index(index):
        return index
    if not gpu_supported(index):
        LOG.info(
            "%s has no faiss GPU implementation; keeping it on CPU", type(_core(index)).__name__
        )
        return index
    if not _RESOURCES:
        _RESOURCES.append(faiss.StandardGpuResources())
    opts = faiss.GpuClonerOptions()
    # float16 lookup tables let GPU IVF-PQ take codes of 56+ bytes; on a Flat index the same
    # option stores the vectors themselves in float16, which a build copied back would keep
    opts.useFloat16 = isinstance(_core(index), faiss.IndexIVFPQ)
    try:
        return faiss.index_cpu_to_gpu(_RESOURCES[0], device, index, opts)
    except RuntimeError as e:
        LOG.warning(
            "faiss refused to move %s to GPU, staying on CPU: %s", type(_core(index)).__name__, e
        )
        return index


def index_to_cpu(index: faiss.Index) -> faiss.Index:
    """Copy a GPU index (or a CPU wrapper around one) back to the CPU, as writing it needs; CPU
    indexes are returned as is."""
    return faiss.index_gpu_to_cpu(index) if is_gpu_index(index) else index


def parameter_space(index: faiss.Index) -> faiss.ParameterSpace:
    """The faiss ParameterSpace that can set search parameters on this index (GPU or CPU)."""
    if is_gpu_index(index) and hasattr(faiss, "GpuParameterSpace"):
        return faiss.GpuParameterSpace()
    return faiss.ParameterSpace()


def _core(index: faiss.Index) -> faiss.Index:
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index
