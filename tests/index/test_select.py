# ruff: noqa: E741 - I is faiss's name for the id table

import numpy as np
import pytest

from index.build import estimate_bytes
from index.metrics import recall_at_k
from index.search import search
from index.select import select_index

SPACE = ["IVF64,Flat", "IVF64,SQ8", "IVF64,PQ16x4fs,Refine(SQfp16)", "HNSW32,Flat"]


def test_picks_the_fastest_candidate_that_meets_the_target(data):
    sel = select_index(data["xb"], data["ids"], data["xq"], SPACE, target_recall=0.9, log=lambda m: None)
    rows = {r.factory: r for r in sel.candidates}
    assert list(rows) == SPACE
    ok = [r for r in rows.values() if r.status in ("chosen", "met target")]
    assert ok and all(r.recall_at_10 >= 0.9 for r in ok)
    assert rows[sel.factory].status == "chosen"
    assert rows[sel.factory].qps == max(r.qps for r in ok)
    assert all(r.build_s > 0 and r.bytes_per_vector > 0 for r in rows.values())
    # the returned index is the chosen one, tuned: its own recall, on ids that are ours
    _, I = search(sel.index, data["xq"], 10)
    assert recall_at_k(I, data["gt_I"], 10) >= 0.9
    assert sel.tuned.met_target and sel.tuned.params == rows[sel.factory].params


def test_budgets_reject_candidates(data):
    n, d = data["xb"].shape
    budget = estimate_bytes("IVF64,SQ8", n, d) + 1000  # SQ8 fits, full vectors do not
    sel = select_index(data["xb"], data["ids"], data["xq"], SPACE, target_recall=0.9,
                       memory_budget_bytes=budget, log=lambda m: None)
    assert sel.factory == "IVF64,SQ8"
    assert {r.factory: r.status for r in sel.candidates if r.factory != "IVF64,SQ8"} == {
        f: "over memory budget" for f in SPACE if f != "IVF64,SQ8"}
    with pytest.raises(ValueError, match=r"IVF64,Flat: build over budget"):
        select_index(data["xb"], data["ids"], data["xq"], SPACE[:2], build_budget_s=0.0, log=lambda m: None)


def test_unreachable_target_keeps_the_most_accurate(data):
    sel = select_index(data["xb"], data["ids"], data["xq"], ["IVF64,PQ4"], target_recall=1.0,
                       log=lambda m: None)
    assert not sel.tuned.met_target
    assert sel.candidates[0].status == "chosen" and sel.candidates[0].recall_at_10 < 1.0
    assert np.isfinite(sel.tuned.qps)
