"""Seeded clustered unit vectors shared by the index tests (small, so each test takes seconds)."""

import numpy as np
import pytest

from index.metrics import exact_knn, synthetic_clustered

D = 32


@pytest.fixture(scope="session")
def data():
    """xb (6000, 32), xq (200, 32) from one mixture, ids offset so they differ from row numbers."""
    x = synthetic_clustered(6200, D, n_clusters=60, seed=0)
    xb, xq = x[:6000], x[6000:]
    ids = np.arange(len(xb), dtype=np.int64) + 10_000
    gt_D, gt_I = exact_knn(xb, xq, 10)
    return {"xb": xb, "xq": xq, "ids": ids, "gt_D": gt_D, "gt_I": gt_I + 10_000}
