"""Autotune search parameters to a recall@k target at the highest QPS.

faiss's ``ParameterSpace`` lists the knobs of an index (nprobe, efSearch,
quantizer_efSearch, ...) on a power-of-two grid; we refine each grid with 1.5x midpoints
(24 between 16 and 32) and drop ``ht`` (polysemous pruning, which needs polysemous
training). ``faiss.contrib.evaluation.OperatingPointsWithRanges`` keeps the measured points.
Recall and time both grow with every knob, so the settings that just meet the target form a
staircase, and the fastest is on it:

  * one or two knobs (efSearch; nprobe; k_factor_rf with either): walk the staircase, from the
    first knob at its lowest and the second at its highest; a setting that meets the target
    steps the second knob down, one that misses steps the first up. That measures at most
    len(first) + len(second) settings and finds the lowest second knob for every first one;
  * three knobs (IVF with an HNSW quantizer under a refine): that walk over the last two for
    each value of the first whose most accurate setting meets the target. Settings with every
    knob >= one that met the target, or >= one already slower than such a setting, are not
    measured, so each walk measures only the part of its staircase that can still win.

The table is then complete only around the chosen point. Recall is the intersection
measure against exact kNN, tie-aware when the database vectors are given (see metrics).
The chosen setting is the fastest measured one with recall >= target (the few that can be
fastest are timed again, interleaved, so one burst of machine load cannot pick a slow one); if none
reaches it, the most accurate one, with ``met_target=False`` (the caller decides whether
that fails).

Modes of ``xb_or_exact``: float (n, d) database vectors (ground truth and exact QPS are
computed here with IndexFlatIP on the same queries; pass ``ids`` when the index holds ids
other than row numbers), or int (nq, >=k) exact neighbour ids (exact_qps is then nan).
"""

# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from functools import partial

import faiss
import numpy as np
from faiss.contrib.evaluation import OperatingPointsWithRanges

from models.timing import interleaved

from .build import unwrap_idmap
from .gpu import parameter_space
from .metrics import recall_at_k, rescore
from .search import search

SKIP_PARAMS = ("ht",)


@dataclass
class TuneResult:
    params: str  # faiss ParameterSpace string, e.g. "nprobe=24"; "" = nothing to set
    recall_at_10: float  # recall@k (intersection, k=10 by default) at params on the tuning queries
    qps: float  # queries/s at params, best of 3 runs over all tuning queries
    exact_qps: float  # brute-force IndexFlatIP on the same queries (nan if gt ids were given)
    met_target: bool = True  # False: no setting reached target_recall; params is the most accurate
    k: int = 10
    table: list[dict] = field(default_factory=list)  # every measured setting: params, recall, qps


def tune_index(
    index: faiss.Index,
    xb_or_exact: np.ndarray,
    xq: np.ndarray,
    k: int = 10,
    target_recall: float = 0.95,
    ids: np.ndarray | None = None,
    gt: dict | None = None,
    finalists: int = 4,
) -> TuneResult:
    """Find the fastest search parameters with recall@k >= target_recall; leaves them applied.

    ``gt``: ``ground_truth(xb_or_exact, xq, k, ids)`` computed once when several indexes are
    tuned on the same data (index.select). ``finalists``: how many settings that met the
    target are timed again, interleaved, before one is picked (see ``_fastest``)."""
    assert 0 < target_recall <= 1, f"target_recall={target_recall} must be in (0, 1]"
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq = len(xq)
    gt = gt or ground_truth(xb_or_exact, xq, k, ids)
    measure = _recall_fn(xb_or_exact, xq, k, ids, gt)

    ps = parameter_space(index)
    ps.initialize(unwrap_idmap(index))
    ranges = _ranges(ps)
    if not ranges:  # Flat: exact, nothing to tune
        D, I, t = _timed(index, xq, k, repeats=3)
        return TuneResult("", measure(I), nq / t, gt["exact_qps"], True, k, [])

    op = OperatingPointsWithRanges()
    for name, values in ranges:
        op.add_range(name, values)

    def run(key) -> tuple[float, float]:
        _set(ps, index, op.get_parameters(key))
        _, I, t = _timed(index, xq, k, repeats=1)
        recall = measure(I)
        op.add_operating_point(key, recall, t)
        return recall, t

    _walk_staircase([len(values) for _, values in ranges], run, target_recall)

    # one row per setting, at its best time (the walk times some twice): slowest first, so
    # a setting's fastest timing is the one left in the dict
    points = sorted(op.operating_points + op.suboptimal_points, key=lambda p: -p[2])
    measured = sorted({tuple(p[0]): p for p in points}.values(), key=lambda p: (p[1], -p[2]))
    ok = [p for p in measured if p[1] >= target_recall]
    key = _fastest(ps, index, xq, k, op, ok, finalists) if ok else measured[-1][0]
    params = op.get_parameters(key)
    _set(ps, index, params)
    _, I, t = _timed(index, xq, k, repeats=3)
    table = [{"params": _fmt(op.get_parameters(kk)), "recall": r, "qps": nq / tt} for kk, r, tt in measured]
    return TuneResult(_fmt(params), measure(I), nq / t, gt["exact_qps"], bool(ok), k, table)


def _walk_staircase(sizes: list[int], run, target: float) -> None:
    """Measure (``run(key) -> (recall, seconds)``) the lowest-cost settings meeting ``target``
    on a grid of monotone knobs with ``sizes`` values each (see the module doc). One knob is
    the walk with a second knob of one value: up until the target is met.

    Recall and time grow with every knob, so a setting is not measured when it has every knob
    >= one that met the target (it meets it too) or >= one slower than a setting that met it
    (it cannot be picked). Either way the walk steps to cheaper settings. A setting slows
    others down only once a second timing confirms it, so one burst of load prunes nothing."""
    seconds: dict[tuple, list[float]] = {}
    met: list[np.ndarray] = []

    def measure(key: np.ndarray) -> float:
        recall, t = run(key)
        seconds.setdefault(tuple(key), []).append(t)
        return recall

    def too_slow(key: np.ndarray) -> bool:
        fastest = min((min(seconds[tuple(m)]) for m in met), default=math.inf)
        for other, times in list(seconds.items()):  # measure() may time `other` again
            if min(times) > fastest and np.all(key >= other):
                if len(times) == 1:
                    measure(np.array(other))
                if min(times) > fastest:
                    return True
        return False

    def meets(key: np.ndarray) -> bool:
        if any(np.all(key >= m) for m in met) or too_slow(key):
            return True
        if measure(key) < target:
            return False
        met.append(key)
        return True

    def walk(prefix: list[int], sizes: list[int]) -> None:
        if len(sizes) > 2:
            for value in range(sizes[0]):
                corner = np.array(prefix + [value] + [s - 1 for s in sizes[1:]])
                if not meets(corner):  # no setting with this value meets the target
                    continue
                walk(prefix + [value], sizes[1:])
            return
        first, second = (sizes + [1])[:2]
        i, j = 0, second - 1
        while i < first and j >= 0:
            if meets(np.array(prefix + [i, j][: len(sizes)])):
                j -= 1
            else:
                i += 1

    walk([], list(sizes))


def _fastest(ps, index, xq, k, op, ok: list, finalists: int):
    """Key of the fastest setting in `ok` (measured points that met the target), re-timed.

    Time grows with every knob, so the fastest setting is one no other setting in `ok`
    undercuts on every knob (a minimal element). Each was timed once during the search, so
    a burst of machine load can make it look slow; the `finalists` quickest-looking minimal
    settings are timed again in turn (A, B, C, A, B, C, ..., models/timing.py) and the
    lowest median wins."""
    minimal = [p for p in ok if not any(np.all(q[0] <= p[0]) and np.any(q[0] < p[0]) for q in ok)]
    best = [p[0] for p in sorted(minimal, key=lambda p: p[2])[: max(1, finalists)]]
    if len(best) == 1:
        return best[0]

    def run(params):
        _set(ps, index, params)
        search(index, xq, k)

    times = interleaved({i: partial(run, op.get_parameters(key)) for i, key in enumerate(best)}, repeats=3)
    return best[min(times, key=lambda i: statistics.median(times[i]))]


def apply_params(index: faiss.Index, params: str) -> faiss.Index:
    """Set a ParameterSpace string such as "nprobe=16,quantizer_efSearch=64" on index."""
    if not params:
        return index
    ps = parameter_space(index)
    ps.initialize(unwrap_idmap(index))
    valid = [name for name, _ in _ranges(ps, skip=())]
    for item in params.split(","):
        name, sep, value = item.partition("=")
        if not sep or name not in valid:
            raise ValueError(
                f"bad search parameter {item!r} for {type(index).__name__}; valid: {valid}"
            )
        ps.set_index_parameter(index, name, float(value))
    return index


def ground_truth(xb_or_exact, xq, k, ids=None) -> dict:
    """{"I", "D", "exact_qps"} of exact kNN of xq (see the module doc for the two modes)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    a = np.asarray(xb_or_exact)
    if np.issubdtype(a.dtype, np.integer):
        assert a.shape[0] == len(xq) and a.shape[1] >= k, (
            f"exact ids shape {a.shape}, need ({len(xq)}, >={k})"
        )
        return {"I": a[:, :k], "D": None, "exact_qps": math.nan}
    assert a.ndim == 2 and a.shape[1] == xq.shape[1], (
        f"xb shape {a.shape} vs queries d={xq.shape[1]}"
    )
    flat = faiss.IndexFlatIP(a.shape[1])
    flat.add(np.ascontiguousarray(a, dtype=np.float32))
    D, I, t = _timed(flat, xq, k, repeats=2)
    if ids is not None:  # -1 (fewer than k vectors) stays -1
        I = np.where(I >= 0, np.asarray(ids, dtype=np.int64)[I], -1)
    return {"I": I, "D": D, "exact_qps": len(xq) / t}


def _recall_fn(xb_or_exact, xq, k, ids, gt):
    """recall(I) -> float; tie-aware (rescoring result ids exactly) when xb is available."""
    if gt["D"] is None:
        return lambda I: recall_at_k(I, gt["I"], k)
    xb = np.asarray(xb_or_exact)
    ids = None if ids is None else np.asarray(ids, dtype=np.int64)
    order = None if ids is None else np.argsort(ids)

    def recall(I):
        rows = I
        if ids is not None:
            pos = np.clip(np.searchsorted(ids[order], I), 0, len(ids) - 1)
            rows = np.where(I >= 0, order[pos], -1)
        return recall_at_k(I, gt["I"], k, rescore(xq, xb, rows), gt["D"])

    return recall


def _timed(index, xq, k, repeats):
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        D, I = search(index, xq, k)
        best = min(best, time.perf_counter() - t0)
    return D, I, max(best, 1e-9)


def _ranges(ps, skip=SKIP_PARAMS) -> list[tuple[str, list[float]]]:
    out = []
    prs = ps.parameter_ranges
    for i in range(prs.size()):
        pr = prs.at(i)
        vals = pr.values  # keep a reference: vector_to_array on a temporary reads freed memory
        values = [vals.at(j) for j in range(vals.size())]
        if pr.name in skip or not values:
            continue
        out.append((pr.name, _refine(values)))
    return out


def _refine(values: list[float]) -> list[float]:
    """Insert 1.5x midpoints into a doubling grid: [8, 16, 32] -> [8, 12, 16, 24, 32]."""
    out = []
    for a, b in zip(values, values[1:] + [None], strict=True):
        out.append(a)
        if b is not None and a >= 2 and b == 2 * a:
            out.append(float(round(1.5 * a)))
    return out


def _set(ps, index, params: dict) -> None:
    for name, value in params.items():
        ps.set_index_parameter(index, name, value)


def _fmt(params: dict) -> str:
    return ",".join(f"{n}={int(v) if float(v).is_integer() else v}" for n, v in params.items())
