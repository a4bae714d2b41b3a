"""models.resume: what a progress file is keyed by, and what it will not resume."""

import numpy as np
import torch

from models import resume
from models.resume import ProgressFile, fingerprint


def test_the_fingerprint_reads_dtypes_shapes_and_values_bfloat16_included():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert fingerprint(x) == fingerprint(x.clone())
    assert fingerprint(x) != fingerprint(x.reshape(3, 2))
    assert fingerprint(x.bfloat16()) != fingerprint(x)  # numpy has no bfloat16: hashed as bytes
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})


def test_a_large_array_is_fingerprinted_by_evenly_spaced_rows(monkeypatch):
    monkeypatch.setattr(resume, "FULL_HASH_BYTES", 1000)
    a = np.zeros((100, 100), np.uint8)
    sampled, skipped = a.copy(), a.copy()
    sampled[50, 0], skipped[51, 0] = 1, 1  # every 10th row is read
    assert fingerprint(a) != fingerprint(sampled)
    assert fingerprint(a) == fingerprint(skipped)
    assert fingerprint(a) != fingerprint(a[:99])  # the shape always counts


def test_a_file_of_other_code_or_format_is_not_resumed(tmp_path, monkeypatch):
    ProgressFile(tmp_path / "p", identity="v1").save("run", {"w": torch.ones(2)}, {"step": 3})
    assert ProgressFile(tmp_path / "p", identity="v1").load("run")[1] == {"step": 3}
    assert ProgressFile(tmp_path / "p", identity="v2").load("run") is None
    monkeypatch.setattr(resume, "FORMAT", resume.FORMAT + 1)
    assert ProgressFile(tmp_path / "p", identity="v1").load("run") is None
