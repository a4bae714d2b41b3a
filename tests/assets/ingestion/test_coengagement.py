"""Splits, co-engagement and popularity over the lake's engagement log (assets.ingestion.coengagement)."""

import hashlib
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from assets.ingestion.coengagement import SplitConfig, coengagement, image_splits, popularity
from assets.store.lake import EVENT_SCHEMA, write_table


def test_coengagement_splits_by_user_and_time(home):
    """Train pairs use only events before the cut-off; test pairs only later events of test users."""
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = []
    for u in range(200):
        for k, img in enumerate(("x", "y", "z")):
            rows.append({"user_id": f"u{u}", "image_id": img, "event": "click", "ts": t0 + timedelta(days=k * 10)})
    write_table(home, "engagement_events", pl.DataFrame(rows, schema=EVENT_SCHEMA))
    out = coengagement(home, SplitConfig(time_quantile=0.7))  # cut-off: day 20
    train = {(a, b) for a, b in zip(out["train"]["a"], out["train"]["b"], strict=True)}
    test = {(a, b) for a, b in zip(out["test"]["a"], out["test"]["b"], strict=True)}
    assert train == {("x", "y"), ("y", "x")}  # z happens after the cut-off
    assert test == set()  # after the cut-off each test user has only z: no pair
    # every user engaged x and y before the cut-off: a pair's count is its split's user count,
    # users bucketed by md5(user_id) % 1000 (test < 200 <= val < 300 <= train)
    bucket = [int(hashlib.md5(f"u{u}".encode()).hexdigest()[:8], 16) % 1000 for u in range(200)]
    n_val, n_train = sum(200 <= b < 300 for b in bucket), sum(b >= 300 for b in bucket)
    assert 0 < n_val < n_train < 200
    assert out["train"]["n"].to_list() == [n_train, n_train]  # train users only, not val or test users
    assert out["val"]["n"].to_list() == [n_val, n_val]


def test_no_engagement_log_means_no_pairs_and_no_popularity(home):
    assert coengagement(home) is None
    assert popularity(home).height == 0


def test_image_splits_are_stable_and_sized():
    ids = [f"img{i}" for i in range(4000)]
    splits = image_splits(ids)
    share = {s: float(np.mean(splits == s)) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.2) < 0.03 and abs(share["val"] - 0.1) < 0.03
    assert (image_splits(ids[::-1])[::-1] == splits).all()  # a hash of the id: order does not matter
