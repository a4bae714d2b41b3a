# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

import numpy as np
import pytest

from index.build import build_index
from index.search import ids_to_keys, search


def test_batched_search_equals_one_call(data):
    index = build_index(data["xb"], data["ids"], "Flat")
    D, I = search(index, data["xq"], 10, batch_size=7)
    D1, I1 = index.search(data["xq"], 10)
    np.testing.assert_array_equal(I, I1)
    np.testing.assert_allclose(D, D1)
    np.testing.assert_array_equal(I, data["gt_I"])


def test_search_rejects_wrong_dim(data):
    index = build_index(data["xb"], data["ids"], "Flat")
    with pytest.raises(AssertionError, match="d=5"):
        search(index, np.zeros((2, 5), "float32"), 3)


def test_ids_to_keys_maps_minus_one_to_none():
    keys = np.array(["img_a", "img_b", "img_c"])
    out = ids_to_keys(np.array([[2, 0, -1]]), keys)
    assert out.tolist() == [["img_c", "img_a", None]]
    assert type(out[0, 0]) is str
    with pytest.raises(AssertionError, match="row id 3"):
        ids_to_keys(np.array([[3]]), keys)
