import faiss
import numpy as np
import pytest

from index.build import build_index, make_empty
from index.gpu import gpu_available, gpu_supported, index_to_cpu, index_to_gpu, is_gpu_index
from index.tune import tune_index

needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a GPU")


def test_supported_types():
    assert gpu_supported(make_empty("Flat", 16))
    assert gpu_supported(make_empty("IVF64,Flat", 16))
    assert gpu_supported(make_empty("OPQ4,IVF64,PQ4", 16))
    assert not gpu_supported(make_empty("HNSW32", 16))
    assert not gpu_supported(make_empty("IVF64_HNSW32,Flat", 16))


def test_cpu_fallback_without_gpu(data):
    if gpu_available():
        pytest.skip("GPU present: fallback path not taken")
    index = build_index(data["xb"], data["ids"], "IVF64,Flat", use_gpu=True)  # falls back
    assert index_to_gpu(index) is index and not is_gpu_index(index)
    assert index_to_cpu(index) is index


def test_hnsw_stays_on_cpu(data):
    index = build_index(data["xb"][:500], data["ids"][:500], "HNSW32")
    assert index_to_gpu(index) is index


@needs_gpu
@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat", "IVF64,PQ8", "OPQ8,IVF64,PQ8"])
def test_gpu_build_and_search_match_cpu(data, factory):
    """A GPU build is the CPU build (a Flat one holds the very vectors, not float16 copies);
    the index moved to the GPU finds what the CPU finds, tunes as well, and comes back whole."""
    params = "nprobe=8" if "IVF" in factory else ""
    cpu = build_index(data["xb"], data["ids"], factory, use_gpu=False, xt=data["xb"][:4000])
    gpu = build_index(data["xb"], data["ids"], factory, use_gpu=True, xt=data["xb"][:4000])
    assert not is_gpu_index(gpu), "build_index must return a CPU index"
    assert len(faiss.serialize_index(gpu)) > 0  # faiss cannot write an index with a GPU part
    if factory == "Flat":
        assert np.array_equal(faiss.downcast_index(gpu.index).reconstruct_n(0, len(data["xb"])), data["xb"])
    on_gpu = index_to_gpu(cpu)
    assert is_gpu_index(on_gpu)
    faiss.GpuParameterSpace().set_index_parameters(on_gpu, params)
    faiss.ParameterSpace().set_index_parameters(cpu, params)
    I_cpu, I_gpu = cpu.search(data["xq"], 10)[1], on_gpu.search(data["xq"], 10)[1]
    assert (I_cpu == I_gpu).mean() > 0.95
    back = index_to_cpu(on_gpu)
    faiss.ParameterSpace().set_index_parameters(back, params)
    assert np.all(back.search(data["xq"], 10)[1] == I_cpu)
    # PQ8 on 32 dimensions tops out near recall 0.75 on either device: the GPU must tune as well
    on_cpu = tune_index(cpu, data["xb"], data["xq"], ids=data["ids"], target_recall=0.9)
    tuned = tune_index(on_gpu, data["xb"], data["xq"], ids=data["ids"], target_recall=0.9)
    assert tuned.met_target == on_cpu.met_target
    assert tuned.recall_at_10 >= min(0.9, on_cpu.recall_at_10) - 0.02
