"""Ranked-list metrics on hand-made rankings with known answers."""

import numpy as np
import pytest

from assets.evaluation.metrics import list_metrics, paired_difference_ci, summarise


def test_perfect_and_empty_rankings():
    m = list_metrics([["a", "b", "x"], ["x", "y"]], [{"a", "b"}, {"z"}])
    assert m["ndcg_at_10"].tolist() == [1.0, 0.0]
    assert m["recall_at_10"].tolist() == [1.0, 0.0]
    assert m["mrr"].tolist() == [1.0, 0.0]


def test_known_values():
    # relevant {a, b}; a at rank 2, b missing from the list
    m = list_metrics([["x", "a", "y"]], [{"a", "b"}])
    dcg = 1 / np.log2(3)
    idcg = 1 + 1 / np.log2(3)
    assert m["ndcg_at_10"][0] == pytest.approx(dcg / idcg)
    assert m["recall_at_10"][0] == 0.5 and m["mrr"][0] == 0.5


def test_recall_at_50_counts_deep_hits():
    ranked = [[f"n{i}" for i in range(20)] + ["a"]]
    m = list_metrics(ranked, [{"a"}])
    assert m["recall_at_10"][0] == 0.0 and m["recall_at_50"][0] == 1.0 and m["mrr"][0] == pytest.approx(1 / 21)


def test_summary_and_paired_ci():
    per = {"ndcg_at_10": np.array([0.2, 0.4, 0.6]), "recall_at_10": np.array([0, 1, 1.0]),
           "recall_at_50": np.ones(3), "mrr": np.array([1, 0.5, 0.25])}
    s = summarise(per)
    assert s["ndcg_at_10"] == pytest.approx(0.4) and s["ndcg_at_10_ci"][0] <= 0.4 <= s["ndcg_at_10_ci"][1]
    mean, lo, hi = paired_difference_ci(np.array([0.5, 0.5, 0.5]), np.array([0.5, 0.5, 0.5]))
    assert mean == lo == hi == 0.0
    mean, lo, hi = paired_difference_ci(np.array([1.0, 0.9, 0.8, 1.0]), np.array([0.0, 0.1, 0.0, 0.2]))
    assert lo > 0, "a consistently better system has a positive interval"


def test_graded_gains_weigh_a_save_over_a_click():
    import math

    save_first = list_metrics([["s", "c", "x"]], [{"s": 2.0, "c": 1.0}])["ndcg_at_10"][0]
    click_first = list_metrics([["c", "s", "x"]], [{"s": 2.0, "c": 1.0}])["ndcg_at_10"][0]
    ideal = 2 + 1 / math.log2(3)
    assert save_first == 1.0 and math.isclose(click_first, (1 + 2 / math.log2(3)) / ideal)
    # all gains 1: the same as a relevant set
    assert list_metrics([["a", "x", "b"]], [{"a": 1.0, "b": 1.0}])["ndcg_at_10"][0] == \
        list_metrics([["a", "x", "b"]], [{"a", "b"}])["ndcg_at_10"][0]
