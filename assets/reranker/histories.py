"""User histories and targets for the "for a user" task, from the engagement log. No Dagster.

Every user belongs to one split (`SplitConfig`, by a hash of the user id), and the cut-off
T is the same as for co-engagement:
- `train` and `val` users (events before T only): their last `target_share` of events are
  the targets, the H distinct images engaged before those the history;
- `test` users: the history is the last H distinct images engaged before T, the targets
  everything they engage at or after T.
So nothing at or after T is trained on, and the evaluation is the future of users never
trained on. A target's gain is 2 for a save and 1 for a click (NDCG's graded relevance); an
image already in the history is never a target (nor a candidate).

Training groups are `[user, positive, negatives...]`: the positive a target among the user's
candidates, the negatives candidates that are not targets (`pairs.mine_groups` on the
users' candidates), the user column indexing the history table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from assets.ingestion.coengagement import SplitConfig, split_events
from assets.store.files import Home
from assets.store.lake import USER_SCHEMA, has_table, read_table

GAINS = {"save": 2, "click": 1}


@dataclass(frozen=True)
class HistoryConfig:
    length: int = 20  # H: history images per user, the most recent last
    recent: int = 5  # the latest history images whose index neighbours are the user's candidates
    target_share: float = 0.5  # share of a train or val user's events (before T) held out as targets
    split: SplitConfig = field(default_factory=SplitConfig)


def user_histories(home: Home, config: HistoryConfig = HistoryConfig()) -> pl.DataFrame:
    """One row per user with a history and targets, in USER_SCHEMA (histories oldest first)."""
    con = split_events(home, config.split) if has_table(home, "engagement_events") else None
    if con is None:
        return pl.DataFrame(schema=USER_SCHEMA)
    events = con.sql("""SELECT user_id, image_id, event, user_split, after_cutoff FROM user_events
                        WHERE user_split = 'test' OR NOT after_cutoff ORDER BY user_id, ts, image_id""").pl()
    rows = []
    for (user,), ev in events.group_by("user_id", maintain_order=True):
        split = ev["user_split"][0]
        images, kinds, after = ev["image_id"].to_list(), ev["event"].to_list(), ev["after_cutoff"].to_list()
        if split == "test":
            cut = after.index(True) if True in after else len(images)
        else:
            cut = len(images) - max(1, int(round(config.target_share * len(images))))
        history = _latest_distinct(images[:cut], config.length)
        gains: dict[str, int] = {}
        for image, kind in zip(images[cut:], kinds[cut:], strict=True):
            if image not in history:
                gains[image] = max(gains.get(image, 0), GAINS.get(kind, 1))
        if history and gains:
            rows.append({"user_id": user, "split": split, "history": history,
                         "targets": list(gains), "gains": list(gains.values())})
    return pl.DataFrame(rows, schema=USER_SCHEMA)


def _latest_distinct(images: list[str], n: int | None) -> list[str]:
    """The last `n` (None: all) distinct images by their latest engagement, oldest first."""
    seen: dict[str, None] = {}
    for image in reversed(images):
        if image not in seen:
            seen[image] = None
            if len(seen) == n:
                break
    return list(reversed(seen))


def history_rows(histories: pl.DataFrame, pos: dict[str, int], length: int) -> np.ndarray:
    """(U, H) int64 catalog rows of each user's history, left-padded with -1, most recent
    last; images the catalog no longer holds are left out."""
    out = np.full((histories.height, length), -1, dtype=np.int64)
    for i, history in enumerate(histories["history"].to_list()):
        rows = [pos[h] for h in history if h in pos][-length:]
        if rows:
            out[i, length - len(rows):] = rows
    return out


def stored_histories(home: Home) -> pl.DataFrame:
    """The `user_histories` table; a clear error before it exists."""
    if not has_table(home, "user_histories"):
        raise FileNotFoundError("no user histories yet: materialise user_histories (lensless run)")
    return read_table(home, "user_histories")


def serving_history(home: Home, user_id: str, length: int | None = HistoryConfig.length) -> list[str]:
    """A user's latest `length` (None: all) distinct engaged images (oldest first), from the
    whole log: what `recommend --user` reads. ValueError for a user the log does not know."""
    if not has_table(home, "engagement_events"):
        raise ValueError("no engagement log: recommendations for a user need one (lensless ingest --engagement FILE)")
    from assets.store.query import connect

    con = connect(home)
    images = [r[0] for r in con.execute("SELECT image_id FROM engagement_events WHERE user_id = ? ORDER BY ts, image_id",
                                        [user_id]).fetchall()]
    if not images:
        users = con.execute("SELECT count(DISTINCT user_id) FROM engagement_events").fetchall()[0][0]
        raise ValueError(f"user {user_id!r} has no engagement ({users} users have; see `lensless sql "
                         "\"SELECT DISTINCT user_id FROM engagement_events\"`)")
    return _latest_distinct(images, length)
