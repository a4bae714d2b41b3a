"""Timing several things fairly on a shared machine: interleaved repeats, median and spread.

`interleaved` calls each function in turn (A, B, C, A, B, C, ...) `repeats` times after
`warmup` rounds, so a burst of load from another process slows every one of them alike and
a ratio of medians holds where single measurements do not (a loaded 2-core machine once put
one ratio at a fifth of its quiet value). `summarise` gives the median and the spread. On a
GPU, pass `sync` (e.g. `torch.cuda.synchronize`) so the clock stops after the queued kernels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(calls: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of every timed call of each function, timed in turn: {name: [s, s, ...]}."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = sync or (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + repeats):
        for name, call in calls.items():
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def summarise(seconds: list[float], scale: float = 1.0) -> dict:
    """{"median", "min", "max", "repeats"} of `seconds` multiplied by `scale`."""
    scaled = [s * scale for s in seconds]
    return {"median": statistics.median(scaled), "min": min(scaled), "max": max(scaled), "repeats": len(scaled)}
