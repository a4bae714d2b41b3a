"""models/timing.py: interleaved repeats, median and spread."""

import pytest

from models.timing import interleaved, summarise


def test_calls_are_timed_in_turn_after_warmup():
    order = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved({"a": lambda: None}, repeats=0)


def test_summary_is_median_and_range():
    assert summarise([0.003, 0.001, 0.002], scale=1000) == pytest.approx(
        {"median": 2.0, "min": 1.0, "max": 3.0, "repeats": 3})
