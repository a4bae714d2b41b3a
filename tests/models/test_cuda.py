"""The CUDA paths of models/: same scores as the CPU, training on the GPU, clear device errors.

The device errors run everywhere; the rest needs torch with a CUDA GPU and is skipped here
(CI has none). Run on a GPU machine: `pytest tests/models/test_cuda.py`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.cost import ms_per_1k_candidates
from models.device import resolve_device
from models.encoder import ImageEncoder, encoder_config
from models.full_vlm import FullVLMConfig, build_full_vlm
from models.gutted_vlm import GuttedConfig, build_gutted
from models.rerankers import load_reranker, save_reranker
from models.train_encoder import EncoderTrainConfig, train_encoder
from models.train_reranker import (
    RerankerTrainConfig,
    evaluate,
    train_reranker,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
D = 16
SMALL = GuttedConfig(embed_dim=D, proj_hidden=32, num_tokens=2)


def _close(a: np.ndarray, b: np.ndarray, rel: float) -> None:
    """Max abs difference within `rel` of the scores' scale (GPU kernels round differently)."""
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert np.abs(a - b).max() <= rel * np.abs(b).max() + 1e-6, np.abs(a - b).max()


def test_device_names_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")  # one past the last GPU
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train_reranker(build_gutted(SMALL), *_groups(), RerankerTrainConfig(device="cuda"))


def _groups(n=48, seed=0):
    """Embeddings whose label is visible, groups [query, same-label, 3 other-label]."""
    rng = np.random.default_rng(seed)
    label = rng.integers(4, size=n)
    emb = (rng.normal(size=(4, D))[label] + 0.3 * rng.normal(size=(n, D))).astype(np.float32)
    groups = []
    for q in range(n):
        pos = rng.choice(np.flatnonzero((label == label[q]) & (np.arange(n) != q)))
        groups.append([q, pos, *rng.choice(np.flatnonzero(label != label[q]), 3, replace=False)])
    groups = np.asarray(groups)
    return emb, groups[:32], groups[32:]


@needs_cuda
@pytest.mark.parametrize("cache", [False, True])
def test_gutted_scores_on_cuda_equal_cpu(cache):
    emb, _, val = _groups()
    model = build_gutted(SMALL)
    q, c = torch.as_tensor(emb[val[:, 0]]), torch.as_tensor(emb[val[:, 1:]])
    with torch.inference_mode():
        cpu = model.score(q, c, use_cache=cache).numpy()
        gpu = model.cuda().score(q.cuda(), c.cuda(), use_cache=cache).cpu().numpy()
    _close(gpu, cpu, 1e-3)


@needs_cuda
def test_full_vlm_scores_on_cuda_equal_cpu():
    pixels = np.random.default_rng(0).integers(0, 256, size=(12, 64, 64, 3), dtype=np.uint8)
    groups = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
    model = build_full_vlm(FullVLMConfig(resolution=64))
    cpu = evaluate(model, pixels, groups)["scores"]
    gpu = evaluate(model.cuda(), pixels, groups)["scores"]  # features follow the model
    _close(gpu, cpu, 1e-2)  # cuDNN runs the patch-embedding convolution in TF32


@needs_cuda
def test_reranker_trains_on_cuda_and_comes_back_to_cpu(tmp_path):
    emb, train, val = _groups()
    model = build_gutted(SMALL)
    cfg = RerankerTrainConfig(stage1_epochs=3, stage2_epochs=1, batch_groups=4, lr=5e-3, patience=5)
    m = train_reranker(model, emb, train, val, dataclasses.replace(cfg, device="cuda"))
    assert m["device"].startswith("cuda")
    losses = [c["loss"] for c in m["loss_curve"]]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert m["best_val_ndcg10"] > m["untrained_val_ndcg10"]
    assert all(p.device.type == "cpu" for p in model.parameters())
    save_reranker(model, tmp_path / "ckpt")
    _close(evaluate(load_reranker(tmp_path / "ckpt"), emb, val)["scores"],
           evaluate(model, emb, val)["scores"], 1e-5)  # fmt: skip
    # the same first step on the CPU: same batches (CPU generator), same loss up to rounding
    one = dataclasses.replace(cfg, device="cpu", stage1_epochs=1, stage2_epochs=0)
    cpu = train_reranker(build_gutted(SMALL), emb, train, val, one)
    assert abs(cpu["loss_curve"][0]["loss"] - losses[0]) < 1e-3


@needs_cuda
def test_full_vlm_trains_on_cuda():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    groups = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]])
    model = build_full_vlm(FullVLMConfig(resolution=32))
    cfg = RerankerTrainConfig(stage1_epochs=1, stage2_epochs=1, batch_groups=2, device="cuda")
    m = train_reranker(model, pixels, groups, groups, cfg)
    assert m["device"].startswith("cuda") and np.isfinite([c["loss"] for c in m["loss_curve"]]).all()
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_cost_timing_waits_for_the_kernels(monkeypatch, device):
    """The clock starts and stops after a synchronize on the features' device."""
    import models.cost

    seen = []
    monkeypatch.setattr(models.cost, "synchronize", lambda d: seen.append(torch.device(d).type))
    model = build_gutted(SMALL).to(device)
    q, c = torch.randn(4, D, device=device), torch.randn(4, 50, D, device=device)
    assert ms_per_1k_candidates(model, q, c, repeats=3, warmup=1) > 0
    assert seen == [device] * 8  # before and after each of the 4 calls


def test_a_failed_training_leaves_the_scorer_frozen_in_eval(monkeypatch):
    model = build_gutted(SMALL)

    def fail(event):
        if event["event"] == "eval" and event["step"] > 0:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        train_reranker(model, *_groups(), RerankerTrainConfig(stage1_epochs=1, stage2_epochs=0, device="cpu"),
                       progress=fail)  # fmt: skip
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@needs_cuda
def test_encoder_trains_on_cuda_with_autocast():
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    x = rng.integers(0, 60, (64, 32, 32, 3)).astype(np.uint8)
    x[labels == 1] += 150
    torch.manual_seed(0)
    model = ImageEncoder(encoder_config("tiny"))
    cfg = EncoderTrainConfig(epochs=100, max_steps=8, batch_size=32, warmup_steps=1, lr=3e-3, device="cuda")
    metrics = train_encoder(model, x, labels, np.array([[0, 2], [1, 3]]), cfg)
    assert metrics["device"].startswith("cuda") and np.isfinite(metrics["loss"]).all()
    assert np.mean(metrics["loss"][-2:]) < np.mean(metrics["loss"][:2])


class _Stop(Exception):
    """Stands for the process dying: raised from the progress callback."""


def _stop_at(kind: str, n: int):
    seen = []

    def stop(event):
        seen.append(event["event"])
        if seen.count(kind) == n:
            raise _Stop

    return stop


@needs_cuda
@pytest.mark.parametrize("resume_on", ["cuda", "cpu"])
def test_a_reranker_stopped_on_cuda_resumes_on_either_device(tmp_path, resume_on):
    """A run stopped on the GPU (optimizer state, CUDA generator and curves in its progress
    file) resumes there or on a CPU-only node, from the step it saved: on the GPU it ends as a
    run never stopped, up to the kernels' rounding; on the CPU it ends with finite weights."""
    from models.rerankers import trained_state
    from models.resume import ProgressFile

    emb, train, val = _groups()
    cfg = RerankerTrainConfig(stage1_epochs=2, stage2_epochs=1, batch_groups=4, lr=5e-3, patience=5,
                              evals_per_epoch=2, progress_seconds=0.0, checkpoint_seconds=0.0, device="cuda")  # fmt: skip
    torch.manual_seed(0)
    whole = build_gutted(SMALL)
    expected = train_reranker(whole, emb, train, val, cfg)
    torch.manual_seed(0)
    progress = ProgressFile(tmp_path / "p.safetensors")
    with pytest.raises(_Stop):
        train_reranker(build_gutted(SMALL), emb, train, val, cfg, progress=_stop_at("eval", 3), progress_file=progress)
    torch.manual_seed(7)
    resumed = build_gutted(SMALL)
    m = train_reranker(resumed, emb, train, val, dataclasses.replace(cfg, device=resume_on), progress_file=progress)
    assert m["resumed_at_step"] and 0 < m["resumed_at_step"] < expected["steps"]
    assert m["device"].startswith(resume_on) and m["steps"] == expected["steps"]
    got, want = trained_state(resumed), trained_state(whole)
    assert got.keys() == want.keys() and all(v.device.type == "cpu" and torch.isfinite(v).all() for v in got.values())
    saved = [c["loss"] for c in m["loss_curve"] if c["step"] <= m["resumed_at_step"]]  # restored from the file
    assert saved and np.allclose(saved, [c["loss"] for c in expected["loss_curve"]][: len(saved)], atol=1e-4)
    if resume_on == "cuda":
        assert np.allclose([c["loss"] for c in m["loss_curve"]], [c["loss"] for c in expected["loss_curve"]], atol=1e-4)
        assert all(torch.allclose(got[k], want[k], atol=1e-4) for k in want)


@needs_cuda
def test_an_encoder_stopped_on_cuda_resumes_there(tmp_path):
    from models.resume import ProgressFile

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
    labels, pairs = np.arange(64) % 2, np.array([[0, 2], [1, 3]])
    cfg = EncoderTrainConfig(epochs=100, max_steps=8, batch_size=32, warmup_steps=1, lr=3e-3, device="cuda",
                             log_every=2, checkpoint_seconds=0.0)  # fmt: skip

    def fresh():
        torch.manual_seed(0)
        return ImageEncoder(encoder_config("tiny"))

    whole = fresh()
    expected = train_encoder(whole, x, labels, pairs, cfg)
    progress = ProgressFile(tmp_path / "e.safetensors")

    def stop(event):
        if event["step"] == 4:
            raise _Stop

    with pytest.raises(_Stop):
        train_encoder(fresh(), x, labels, pairs, cfg, progress=stop, progress_file=progress)
    resumed = fresh()
    m = train_encoder(resumed, x, labels, pairs, cfg, progress_file=progress)
    assert m["resumed_at_step"] == 4 and m["steps"] == expected["steps"]
    assert np.allclose(m["loss"], expected["loss"], atol=1e-3)
    want = whole.state_dict()
    assert all(torch.allclose(v.float(), want[k].float(), atol=1e-3) for k, v in resumed.state_dict().items())
