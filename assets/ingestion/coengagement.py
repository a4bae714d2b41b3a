"""Splits, co-engagement and popularity from the engagement log, counted in DuckDB. No Dagster.

Every split in the pipeline comes from `SplitConfig`, so the encoder, the training groups and
the evaluation never disagree about what is held out:
- with engagement, users are split (bucketed by md5(user_id)): `test` users' events at or
  after the cut-off T (the `time_quantile` of event time) are the evaluation, `val` users'
  events before T validate, the other users' events before T train. No future engagement
  leaks into training.
- images are split by a hash of `image_id` (`image_splits`), with the same fractions: the
  encoder never trains on a `test` image, and without engagement (labels only) the
  evaluation queries are exactly the `test` images.

Co-engagement: two distinct images engaged by the same user within a split; a pair's strength
is the number of such users. The self-join runs in DuckDB over the lake's `engagement_events`
view with a memory limit, so it spills to disk instead of failing on logs larger than memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from assets.store.files import Home
from assets.store.lake import has_table
from assets.store.query import connect

SPLITS = ("train", "val", "test")
PAIR_SCHEMA = {"a": pl.Utf8, "b": pl.Utf8, "n": pl.Int64}


@dataclass(frozen=True)
class SplitConfig:
    val: float = 0.1  # share of users (or, without engagement, images) that validate
    test: float = 0.2  # share of users (or images) held out for evaluation
    time_quantile: float = 0.75  # cut-off T as a quantile of event time
    min_count: int = 1  # users needed for a co-engagement pair to count
    memory_limit: str = "2GB"  # DuckDB spills past this

    def __post_init__(self):
        if not (self.test > 0 and self.val > 0 and self.test + self.val < 1):
            raise ValueError(f"split shares must be positive and sum below 1, got val {self.val}, test {self.test}")


def _bucket(key: str) -> float:
    """A stable number in [0, 1) from sha256(key)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def image_splits(image_ids, config: SplitConfig = SplitConfig()) -> np.ndarray:
    """"train", "val" or "test" per image id, stable as batches arrive (a hash of the id)."""
    u = np.array([_bucket(i) for i in image_ids], dtype=float)
    return np.where(u < config.test, "test", np.where(u < config.test + config.val, "val", "train"))


def split_events(home: Home, config: SplitConfig):
    """A connection with views `split_events(user_id, image_id, split)` (split NULL for events
    no split uses) and `user_events(user_id, image_id, event, ts, user_split, after_cutoff)`
    (every event, with its user's split); None without events."""
    if not has_table(home, "engagement_events"):
        return None
    con = connect(home, config.memory_limit)
    if con.execute("SELECT count(*) FROM engagement_events").fetchall()[0][0] == 0:
        return None
    cutoff = con.execute(f"SELECT quantile_disc(ts, {config.time_quantile}) FROM engagement_events").fetchall()[0][0]
    bucket = "CAST(('0x' || substr(md5(user_id), 1, 8)) AS BIGINT) % 1000"
    test_hi, val_hi = int(config.test * 1000), int((config.test + config.val) * 1000)
    after = f"ts >= TIMESTAMPTZ '{cutoff.isoformat()}'"
    con.sql(f"""CREATE VIEW user_events AS SELECT user_id, image_id, event, ts,
        CASE WHEN {bucket} < {test_hi} THEN 'test' WHEN {bucket} < {val_hi} THEN 'val' ELSE 'train' END AS user_split,
        {after} AS after_cutoff
        FROM engagement_events""")
    con.sql("""CREATE VIEW split_events AS SELECT user_id, image_id,
        CASE WHEN user_split = 'test' THEN (CASE WHEN after_cutoff THEN 'test' END)
             ELSE (CASE WHEN NOT after_cutoff THEN user_split END) END AS split
        FROM user_events""")
    return con


def coengagement(home: Home, config: SplitConfig = SplitConfig(),
                 splits: tuple[str, ...] = SPLITS) -> dict[str, pl.DataFrame] | None:
    """Co-engagement pairs (a, b, n) of each of `splits`; None when there is no engagement log."""
    con = split_events(home, config)
    if con is None:
        return None
    out = {}
    for split in splits:
        out[split] = con.sql(f"""
            WITH e AS (SELECT DISTINCT user_id, image_id FROM split_events WHERE split = '{split}')
            SELECT x.image_id AS a, y.image_id AS b, count(*) AS n
            FROM e x JOIN e y ON x.user_id = y.user_id AND x.image_id <> y.image_id
            GROUP BY 1, 2 HAVING count(*) >= {config.min_count}
            ORDER BY 1, 2""").pl()
    return out


def popularity(home: Home, config: SplitConfig = SplitConfig()) -> pl.DataFrame:
    """(image_id, n) engagement counts over the train split only (no test-period leakage)."""
    con = split_events(home, config)
    if con is None:
        return pl.DataFrame(schema={"image_id": pl.Utf8, "n": pl.Int64})
    return con.sql("""SELECT image_id, count(*) AS n FROM split_events WHERE split = 'train'
        GROUP BY 1 ORDER BY n DESC, image_id""").pl()


def strongest_first(strength, rng: np.random.Generator) -> np.ndarray:
    """Indices ordering `strength` from strongest down, equal strengths in an order drawn from
    `rng`: how groups, budgets and the encoder's pairs all spend a budget on evidence."""
    return np.lexsort((rng.random(len(strength)), -np.asarray(strength)))
