"""Ranking metrics on hand-made rankings with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from models.ranking_metrics import (
    bootstrap_ci,
    mrr,
    ndcg_at_k,
    positive_first_relevance,
    rank_order,
    recall_at_k,
)


def test_single_positive_at_known_ranks():
    rel = positive_first_relevance(3, 4)
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # positive ranked 1st
            [0.5, 0.9, 0.1, 0.2],  # 2nd
            [0.0, 0.9, 0.8, 0.7],  # 4th
        ]
    )
    np.testing.assert_allclose(ndcg_at_k(scores, rel, 10), [1.0, 1 / np.log2(3), 1 / np.log2(5)])
    np.testing.assert_allclose(mrr(scores, rel), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(recall_at_k(scores, rel, 2), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(ndcg_at_k(scores, rel, 3), [1.0, 1 / np.log2(3), 0.0])


def test_graded_relevance_ndcg():
    # ranking gains [3, 2, 0, 1]; ideal [3, 2, 1, 0]
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    rel = np.array([[3.0, 2.0, 0.0, 1.0]])
    disc = 1 / np.log2(np.arange(2, 6))
    expect = (np.array([3, 2, 0, 1]) @ disc) / (np.array([3, 2, 1, 0]) @ disc)
    np.testing.assert_allclose(ndcg_at_k(scores, rel, 10), [expect])
    np.testing.assert_allclose(recall_at_k(scores, rel, 2), [2 / 3])


def test_ties_are_pessimistic():
    rel = positive_first_relevance(1, 3)
    const = np.zeros((1, 3))
    assert rank_order(const, rel)[0, -1] == 0  # the positive goes last among ties
    np.testing.assert_allclose(mrr(const, rel), [1 / 3])


def test_no_relevant_gives_zero_and_bad_shapes_raise():
    assert ndcg_at_k(np.ones((1, 3)), np.zeros((1, 3)))[0] == 0.0
    assert mrr(np.ones((1, 3)), np.zeros((1, 3)))[0] == 0.0
    with pytest.raises(ValueError, match=r"\(G, C\)"):
        ndcg_at_k(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k(np.ones((1, 3)), np.ones((1, 3)), k=0)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(0).uniform(size=200)
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert a == b
    assert a["lo"] < a["mean"] < a["hi"] and a["n"] == 200
    const = bootstrap_ci(np.full(10, 0.5))
    assert const["lo"] == const["hi"] == 0.5
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(values, alpha=1.5)
