# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

import numpy as np
import pytest
from faiss.contrib.evaluation import knn_intersection_measure

from index.metrics import exact_knn, one_recall_at_k, recall_at_k, rescore, synthetic_clustered


def test_recall_hand_made():
    gt = np.array([[1, 2, 3], [4, 5, 6]])
    res = np.array([[1, 2, 3], [6, 9, -1]])
    assert recall_at_k(res, gt, 3) == pytest.approx(4 / 6)
    assert recall_at_k(res, gt, 1) == pytest.approx(1 / 2)
    assert one_recall_at_k(res, gt, 3) == pytest.approx(1 / 2)
    assert recall_at_k(res, gt, 3) == pytest.approx(knn_intersection_measure(res, gt))


def test_recall_counts_only_the_neighbours_that_exist():
    """A database of 2 vectors has 2 neighbours to find, not k=3: finding both is recall 1."""
    gt = np.array([[0, 1, -1], [1, 0, -1]])
    assert recall_at_k(np.array([[0, 1, -1], [1, -1, -1]]), gt, 3) == pytest.approx(3 / 4)
    D = np.array([[0.9, 0.5, -np.inf], [0.8, 0.1, -np.inf]], dtype="float32")
    assert recall_at_k(np.array([[0, 1, -1], [1, 0, -1]]), gt, 3, D, D) == 1.0


def test_recall_ties_accept_equal_kth_score():
    # ids 3 and 4 both score 0.8 = the exact 3rd score: either is a correct 3rd neighbour
    gt_I, gt_D = np.array([[1, 2, 3]]), np.array([[0.9, 0.85, 0.8]])
    I, D = np.array([[1, 2, 4]]), np.array([[0.9, 0.85, 0.8]])
    assert recall_at_k(I, gt_I, 3) == pytest.approx(2 / 3)
    assert recall_at_k(I, gt_I, 3, D, gt_D) == pytest.approx(1.0)
    # a lower score is not a tie
    assert recall_at_k(I, gt_I, 3, np.array([[0.9, 0.85, 0.7]]), gt_D) == pytest.approx(2 / 3)
    # duplicates in a result count once
    assert recall_at_k(np.array([[1, 1, 1]]), gt_I, 3, D, gt_D) == pytest.approx(1 / 3)


def test_one_recall_ties():
    gt_I, gt_D = np.array([[7, 8]]), np.array([[0.5, 0.5]])
    I, D = np.array([[8, 1]]), np.array([[0.5, 0.1]])
    assert one_recall_at_k(I, gt_I, 2) == 0.0
    assert one_recall_at_k(I, gt_I, 2, D, gt_D) == 1.0


def test_recall_rejects_bad_shapes():
    with pytest.raises(AssertionError, match="k=5"):
        recall_at_k(np.zeros((2, 3), int), np.zeros((2, 3), int), 5)
    with pytest.raises(AssertionError, match="both D and gt_D"):
        recall_at_k(np.zeros((1, 3), int), np.zeros((1, 3), int), 3, D=np.zeros((1, 3)))


def test_exact_knn_matches_numpy_and_rescore():
    x = synthetic_clustered(500, 16, seed=1)
    xb, xq = x[:450], x[450:]
    D, I = exact_knn(xb, xq, 5)
    ref = np.argsort(-(xq @ xb.T), axis=1)[:, :5]
    assert recall_at_k(I, ref, 5) == 1.0
    np.testing.assert_allclose(rescore(xq, xb, I), D, rtol=1e-5, atol=1e-6)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.isneginf(rescore(xq[:1], xb, np.array([[-1]])))[0, 0]
