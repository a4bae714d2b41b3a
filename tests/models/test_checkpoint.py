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


def test_a_checkpoint_of_another_model_or_format_is_a_clear_error(tmp_path):
    """A directory that is not a lensless checkpoint, or whose config has fields this model
    does not know, is a ValueError naming it: not a KeyError, TypeError or assert."""
    import json

    from models.encoder import ImageEncoder, encoder_config
    from models.rerankers import load_reranker, save_reranker
    from models.sequential import SequentialConfig, build_sequential

    foreign = tmp_path / "foreign"
    save_checkpoint(foreign, {"w": torch.zeros(2)}, {"kind": "x"})
    (foreign / "config.json").write_text(json.dumps({"architectures": ["Qwen3VL"], "hidden_size": 8}))
    with pytest.raises(ValueError, match="is not a lensless checkpoint's config"):
        load_checkpoint(foreign)

    encoder = tmp_path / "encoder"
    ImageEncoder(encoder_config("tiny")).save(encoder)
    payload = json.loads((encoder / "config.json").read_text())
    payload["config"]["new_field"] = 1
    (encoder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"EncoderConfig fields this lensless does not know: \['new_field'\]"):
        ImageEncoder.from_checkpoint(encoder)

    peer = tmp_path / "peer"
    save_reranker(build_sequential(SequentialConfig()), peer)
    payload = json.loads((peer / "config.json").read_text())
    payload["config"]["model"]["new_field"] = 1
    (peer / "config.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"SequentialConfig fields this lensless does not know: \['new_field'\]"):
        load_reranker(peer)
