#!/usr/bin/env bash
# The GPU checks, in one call on a machine with an NVIDIA GPU: which CUDA/faiss pieces are
# there, then the chosen groups of steps (all by default). Logs go to $OUT (or ./out).
#   PY=python3 bash bench/gpu_check.sh [models] [index] [rerank] [encoder]
#     models   the models' tests, the CUDA ones included (tests/models/test_cuda.py)
#     index    the index tests with faiss-gpu (tests/index/test_gpu.py) and bench/index_gpu.py
#     rerank   bench/rerank.py on the GPU, at the tiny size and at Qwen3-VL-2B size
#     encoder  bench/encoder_device.py (encoder training, CPU against GPU)
# Exits non-zero when any step failed; every step still runs. faiss-gpu-cu12 on a machine
# with only CUDA 13's cuBLAS: see bench/cublas12_shim.c.
set -o pipefail
PY=${PY:-python3}
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=0
# step NAME LOG SECONDS CMD...: runs CMD under a timeout, shows and logs its output, records a failure
# (in this shell: a step piped into tee would run in a subshell and lose `failed`)
step() {
  local name=$1 log=$2; shift 2
  echo "=== $name" | tee "$log"
  timeout "$@" 2>&1 | tee -a "$log"; local rc=${PIPESTATUS[0]}
  echo "=== rc=$rc" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=1
}
{
  nvidia-smi -L
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__)"
  $PY -c "import faiss; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)" 2>&1 | tail -1
  echo "libcublas.so.12 on the machine: $(ldconfig -p | grep -c 'libcublas.so.12'), $(find / -name 'libcublas.so.12*' -not -path '/proc/*' 2>/dev/null | head -3 | tr '\n' ' ')"
} 2>&1 | tee "$OUT/env.txt"
groups=" ${*:-models index rerank encoder} "
want() { [[ $groups == *" $1 "* ]]; }
want models && step "models tests on the GPU" "$OUT/pytest.txt" 240 $PY -m pytest -q -p no:cacheprovider tests/models/test_cuda.py \
  tests/models/test_gutted_vlm.py tests/models/test_full_vlm.py tests/models/test_train_reranker.py \
  tests/models/test_cost.py tests/models/test_encoder.py
want index && step "index tests with faiss-gpu" "$OUT/index_tests.txt" 200 $PY -m pytest -q -p no:cacheprovider tests/index
want index && step "faiss build and search, CPU against GPU" "$OUT/index_gpu.txt" 300 $PY bench/index_gpu.py
want rerank && step "rerank bench, cuda" "$OUT/rerank_cuda.txt" 200 $PY bench/rerank.py --device cuda --cost-queries 64 --repeats 5
want rerank && step "rerank cost at Qwen3-VL-2B size, 448 px, bf16" "$OUT/rerank_2b.txt" 200 $PY bench/rerank.py --device cuda \
  --cost-only --base Qwen3-VL-2B --resolution 448 --dtype bfloat16 --cost-queries 8
want encoder && step "encoder training, cpu vs cuda" "$OUT/encoder_device.txt" 150 $PY bench/encoder_device.py
exit $failed
