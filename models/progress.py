"""Progress lines people can read: where a long loop is, how long it has run, what is left.

The trainers report events with `step`, `total` and `elapsed` (seconds); `progress_line`
turns one into `stage 2 epoch 1/2 step 40/250 loss 0.412 val NDCG@10 0.571 · 2:10 · ~3 min left`.
The estimate assumes the remaining steps take as long as the ones done; early stopping can
only make it shorter.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def clock(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def time_left(done: int, total: int, elapsed: float) -> str:
    """`~3 min left`, `~40 s left`, or `done`, from the mean time of the steps done."""
    if done >= total:
        return "done"
    if done <= 0:
        return "estimating"
    left = elapsed / done * (total - done)
    return f"~{left:.0f} s left" if left < 90 else f"~{left / 60:.0f} min left"


def progress_line(event: dict) -> str:
    """One event of a trainer as a line: its position (stage, epoch, step of total), the
    numbers it carries (loss, val NDCG@10), the time it has run and an estimate of what is left;
    the reranker trainer's closing `done` event as its best validation score and time, its
    `resumed` event as where it goes on from."""
    if event.get("event") == "done":
        return f"done in {clock(event['seconds'])}, best val NDCG@10 {event['best_val_ndcg10']:.3f}"
    if event.get("event") == "resumed":
        stage = f"stage {event['stage']} " if event.get("stage") else ""
        return (f"resumed where a stopped run saved its progress: {stage}step {event['step']}/{event['total']} · "
                f"{clock(event['elapsed'])} trained before")
    parts = []
    if event.get("stage"):
        parts.append(f"stage {event['stage']}")
    if "epoch" in event and "epochs" in event:
        parts.append(f"epoch {event['epoch'] + 1}/{event['epochs']}")
    parts.append(f"step {event['step']}/{event['total']}")
    for key, label, fmt in (("loss", "loss", ".4f"), ("train_loss", "loss", ".4f"), ("val_ndcg10", "val NDCG@10", ".3f")):
        if event.get(key) is not None:
            parts.append(f"{label} {event[key]:{fmt}}")
    line = " ".join(parts)
    if "elapsed" in event:
        line += f" · {clock(event['elapsed'])} · {time_left(event['step'], event['total'], event['elapsed'])}"
    return line


def throttled(log: Callable[[str], None], what: str, every: float = 15.0) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback for a long loop that logs `what: done/total · elapsed ·
    time left` at most every `every` seconds, and once at the end."""
    start = last = time.perf_counter()

    def update(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done < total and now - last < every:
            return
        last = now
        log(f"{what}: {done}/{total} · {clock(now - start)} · {time_left(done, total, now - start)}")

    return update
