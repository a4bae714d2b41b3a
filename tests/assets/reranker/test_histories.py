"""User histories: the latest distinct images, padded rows, and targets that respect time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from assets.ingestion.coengagement import SplitConfig
from assets.reranker.histories import HistoryConfig, _latest_distinct, history_rows, user_histories
from assets.store.lake import EVENT_SCHEMA, write_table


def test_latest_distinct_keeps_each_image_at_its_last_engagement():
    assert _latest_distinct(["a", "b", "a", "c", "b", "d"], 3) == ["c", "b", "d"]
    assert _latest_distinct(["a", "a"], 5) == ["a"]


def test_history_rows_are_left_padded_and_skip_unknown_images():
    users = pl.DataFrame({"history": [["x", "y", "z"], ["gone", "y"]]})
    rows = history_rows(users, {"x": 0, "y": 1, "z": 2}, 4)
    assert rows.tolist() == [[-1, 0, 1, 2], [-1, -1, -1, 1]]
    assert history_rows(users, {"x": 0, "y": 1, "z": 2}, 2).tolist() == [[1, 2], [-1, 1]]


def test_targets_follow_the_history_in_time_and_a_save_outweighs_a_click(home):
    """Each user engages 10 images in order, the last one twice (click, then save). Train and
    val users' targets are their last events before the cut-off; test users' are after it."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for u in range(60):
        for i in range(10):
            rows.append({"user_id": f"u{u}", "image_id": f"i{u}_{i}", "event": "click", "ts": t0 + timedelta(days=i)})
        rows.append({"user_id": f"u{u}", "image_id": f"i{u}_9", "event": "save", "ts": t0 + timedelta(days=9, hours=1)})
    write_table(home, "engagement_events", pl.DataFrame(rows, schema=EVENT_SCHEMA))
    cfg = HistoryConfig(length=3, target_share=0.25, split=SplitConfig(time_quantile=0.75))
    users = user_histories(home, cfg)
    assert set(users["split"]) == {"train", "val", "test"}
    for row in users.iter_rows(named=True):
        order = [int(i.split("_")[1]) for i in row["history"]]
        assert order == sorted(order) and len(order) <= 3
        assert min(int(t.split("_")[1]) for t in row["targets"]) > max(order)  # targets come after the history
        assert not set(row["targets"]) & set(row["history"])
        if row["split"] == "test":  # the cut-off is day 8 (the 0.75 quantile of 11 event times)
            assert order == [5, 6, 7] and row["targets"] == [f"{row['user_id'].replace('u', 'i')}_{d}" for d in (8, 9)]
            assert row["gains"] == [1, 2]  # image 9: clicked, then saved
        else:  # before the cut-off only: 8 events, the last quarter (2) are targets
            assert order == [3, 4, 5] and [int(t.split("_")[1]) for t in row["targets"]] == [6, 7]
    assert np.all(users["history"].list.len().to_numpy() >= 1)
