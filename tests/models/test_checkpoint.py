"""Checkpoints are checked on load, and a scorer never returns scores that are not finite."""

import numpy as np
import pytest
import torch

from models.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from models.scoring import score_candidates


def test_damaged_weights_are_an_error_naming_the_file(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.arange(4096, dtype=torch.float32)}, {"kind": "x"})
    tensors, config, _ = load_checkpoint(tmp_path)
    assert torch.equal(tensors["w"], torch.arange(4096, dtype=torch.float32)) and config == {"kind": "x"}
    data = bytearray((tmp_path / WEIGHTS).read_bytes())
    data[-1024:] = b"\x7f" * 1024  # bytes inside the tensor data: safetensors alone would load NaNs
    (tmp_path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{WEIGHTS} are damaged"):
        load_checkpoint(tmp_path)


class NaNScorer(torch.nn.Module):
    """Scores like a damaged model: NaN for every candidate."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def score(self, q, c, prior=None, history=None):
        return torch.full(c.shape[:2], float("nan"))


def test_scores_that_are_not_finite_are_an_error():
    feats = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="20 of 20 scores that are not finite"):
        score_candidates(NaNScorer(), feats, np.array([0, 1]), np.array([[2] * 10, [3] * 10]))
