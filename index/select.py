"""Pick the index: build every candidate factory, tune each to the recall target, keep the fastest.

``select_index`` tries ``index.build.candidate_factories`` (or any list) in order. For each
candidate it

  1. skips it when ``estimate_bytes`` already exceeds the memory budget;
  2. builds it over all of xb (``build_s``, training included) and rejects it when the
     build took longer than ``build_budget_s`` (rebuilds follow every encoder change, so a
     slow build is a cost paid again and again);
  3. tunes it (``tune_index``, one exact ground truth shared by all candidates) and
     measures its serialised size (``bytes_per_vector``), rejecting it over the budget.

The choice is the highest tuned QPS among candidates that met the recall target within
both budgets; when none met it, the most accurate within the budgets (``met_target`` is
then False and the caller decides). Only the best index so far is kept in memory. Every
candidate's row (factory, status, params, recall, QPS, bytes per vector, build and tune
seconds) goes into ``Selection.candidates``: that table is why the index is what it is.
QPS is each tuner's best of 3 runs, measured one candidate after another: close QPS values
(within ~20%) may swap order on a loaded machine.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from .build import build_index, estimate_bytes
from .tune import TuneResult, ground_truth, tune_index

LOG = logging.getLogger(__name__)


@dataclass
class Candidate:
    factory: str
    status: str  # chosen | met target | below target | over memory budget | build over budget
    params: str = ""
    recall_at_10: float | None = None
    qps: float | None = None
    bytes_per_vector: float | None = None
    build_s: float | None = None
    tune_s: float | None = None


@dataclass
class Selection:
    index: faiss.Index
    factory: str
    tuned: TuneResult
    build_s: float
    candidates: list[Candidate] = field(default_factory=list)


def select_index(
    xb: np.ndarray,
    ids: np.ndarray,
    xq: np.ndarray,
    factories: list[str],
    k: int = 10,
    target_recall: float = 0.95,
    memory_budget_bytes: int | None = None,
    build_budget_s: float | None = None,
    use_gpu: bool | None = None,
    seed: int = 0,
    log=LOG.info,
) -> Selection:
    """Build, tune and compare ``factories`` over xb (ids: int64 per row); see the module doc."""
    assert factories, "no candidate factories to try"
    n, d = xb.shape
    mem = math.inf if memory_budget_bytes is None else memory_budget_bytes
    slow = math.inf if build_budget_s is None else build_budget_s
    gt = ground_truth(xb, xq, k, ids)
    rows: list[Candidate] = []
    best = None  # (sort key, Selection)
    for i, factory in enumerate(factories, 1):
        if estimate_bytes(factory, n, d) > mem:
            rows.append(Candidate(factory, "over memory budget"))
            log(f"candidate {i}/{len(factories)} {factory}: skipped, ~{estimate_bytes(factory, n, d) / 2**20:.0f} MiB "
                f"> budget {mem / 2**20:.0f} MiB")
            continue
        log(f"candidate {i}/{len(factories)} {factory}: building over {n} vectors")
        t = time.perf_counter()
        index = build_index(xb, ids, factory, use_gpu=use_gpu, seed=seed)
        build_s = time.perf_counter() - t
        row = Candidate(factory, "", build_s=round(build_s, 2))
        rows.append(row)
        if build_s > slow:
            row.status = "build over budget"
            log(f"candidate {factory}: build {build_s:.0f} s > budget {slow:.0f} s, rejected")
            continue
        t = time.perf_counter()
        tuned = tune_index(index, xb, xq, k=k, target_recall=target_recall, ids=ids, gt=gt)
        size = len(faiss.serialize_index(index))
        row.tune_s = round(time.perf_counter() - t, 2)
        row.params, row.recall_at_10, row.qps = tuned.params, tuned.recall_at_10, round(tuned.qps, 1)
        row.bytes_per_vector = round(size / max(1, index.ntotal), 1)
        if size > mem:
            row.status = "over memory budget"
        else:
            row.status = "met target" if tuned.met_target else "below target"
        log(f"candidate {factory}: {tuned.params or '(exact)'} recall@{k} {tuned.recall_at_10:.4f}, "
            f"{tuned.qps:,.0f} QPS, {row.bytes_per_vector:.0f} B/vector, build {build_s:.1f} s: {row.status}")
        if row.status.startswith("over"):
            continue
        key = (tuned.met_target, tuned.qps if tuned.met_target else tuned.recall_at_10)
        if best is None or key > best[0]:
            best = (key, Selection(index, factory, tuned, build_s))
        del index
    if best is None:
        raise ValueError(
            f"no candidate index fits the budgets (memory {memory_budget_bytes} bytes, build "
            f"{build_budget_s} s): " + "; ".join(f"{r.factory}: {r.status}" for r in rows)
        )
    chosen = best[1]
    next(r for r in rows if r.factory == chosen.factory).status = "chosen"
    chosen.candidates = rows
    return chosen
