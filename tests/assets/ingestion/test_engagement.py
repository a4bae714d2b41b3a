"""Engagement files: checked before they are registered, bad rows dropped and counted by reason,
a vanished file skipped with a warning, and `lensless engagement list/remove`."""

import datetime
import os

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from assets.ingestion.assets import engagement_events
from assets.ingestion.engagement import (
    load_engagement_file,
    register_source,
    registered_sources,
    resolve_events,
)
from assets.store.lake import DUPLICATE_SCHEMA, MANIFEST_SCHEMA, read_table

MANIFEST = pl.DataFrame([{"image_id": f"id{i}", "row": i, "uri": f"/img/{i}.png", "sha256": f"s{i}", "width": 8,
                          "height": 8, "label": None, "batch": "b", "ingested_at": None} for i in range(3)],
                        schema=MANIFEST_SCHEMA)


def test_bad_rows_are_dropped_and_counted_not_the_file():
    frame = pl.DataFrame({
        "user_id": ["u1", None, "u3", "u4", "u5", "u6"],
        "image_id": ["id0", "id1", "id2", "id1", "nope", "id0"],
        "event": ["save", "click", "click", "like", "click", "CLICK"],
        "ts": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "not a time", "2026-01-02T00:00:00Z",
               "2026-01-03T00:00:00Z", None],
    })
    events, dropped = resolve_events(frame, MANIFEST, pl.DataFrame(schema=DUPLICATE_SCHEMA))
    assert events["user_id"].to_list() == ["u1"]
    assert dropped == {"missing_user": 1, "missing_ts": 1, "unparseable_ts": 1, "unknown_event": 1,
                       "unknown_image": 1}
    assert sum(dropped.values()) + events.height == frame.height


def test_a_file_mixing_iso_forms_keeps_every_row(home, tmp_path):
    # each row parses on its own: a date-only first row does not fix the format for the rest
    path = tmp_path / "events.csv"
    times = ["2026-01-01", "2026-01-01T10:30:00Z", "2026-01-01 12:00:00.250", "2026-01-01T14:00:00+02:00",
             "2026-01-01T15:45"]
    path.write_text("user_id,image_id,event,ts\n" + "".join(f"u,id0,click,{t}\n" for t in times))
    events, dropped = resolve_events(load_engagement_file(str(path)), MANIFEST, pl.DataFrame(schema=DUPLICATE_SCHEMA))
    assert sum(dropped.values()) == 0
    assert [t.strftime("%H:%M:%S.%f") for t in events["ts"]] == [
        "00:00:00.000000", "10:30:00.000000", "12:00:00.000000", "12:00:00.250000", "15:45:00.000000"]


@pytest.mark.parametrize(("content", "message"), [
    ("", "cannot be read"),
    ("user_id,image_id,ts\nu,id0,2026-01-01\n", r"lacks columns \['event'\]"),
])
def test_a_bad_file_is_never_registered(home, tmp_path, content, message):
    path = tmp_path / "events.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        register_source(home, str(path))
    assert registered_sources(home) == []


@pytest.mark.parametrize(("column", "value", "message"), [
    ("ts", datetime.time(1, 2), "ts of type Time"),
    ("ts", datetime.timedelta(days=1), "ts of type Duration"),
    ("user_id", ["u"], "user_id of type List"),
    ("image_id", b"id0", "image_id of type Binary"),
    ("event", 1, "event of type Int64"),
])
def test_a_parquet_file_with_a_column_of_the_wrong_type_is_never_registered(home, tmp_path, column, value,
                                                                           message):
    path = tmp_path / "events.parquet"
    row = {"user_id": "u", "image_id": "id0", "event": "click", "ts": datetime.datetime(2026, 1, 1), column: value}
    pl.DataFrame([row]).write_parquet(path)
    with pytest.raises(ValueError, match=message):
        register_source(home, str(path))
    assert registered_sources(home) == []


def test_a_fifo_is_refused_not_read(home, tmp_path):
    os.mkfifo(tmp_path / "events.csv")  # opening it would wait for a writer for ever
    with pytest.raises(ValueError, match="is not a regular file"):
        register_source(home, str(tmp_path / "events.csv"))


def test_epoch_numbers_as_ts_are_refused_not_read_as_1970(home, tmp_path):
    path = tmp_path / "events.parquet"
    pl.DataFrame({"user_id": ["u"], "image_id": ["id0"], "event": ["click"], "ts": [1735689600]}).write_parquet(path)
    with pytest.raises(ValueError, match="ts of type Int64; valid: date-times, dates, or ISO 8601 text"):
        register_source(home, str(path))
    assert registered_sources(home) == []


def test_a_file_listed_again_after_a_touch_maps_its_events_once_to_its_latest_image():
    manifest = pl.concat([MANIFEST, MANIFEST.head(1).with_columns(  # /img/0.png edited: a new image in batch c
        pl.lit("id9").alias("image_id"), pl.lit(9).cast(pl.Int64).alias("row"), pl.lit("c").alias("batch"))])
    touched = pl.DataFrame([{"uri": "/img/1.png", "sha256": "s1", "duplicate_of": "id1", "batch": "c"}],
                           schema=DUPLICATE_SCHEMA)  # /img/1.png touched: the same bytes again
    frame = pl.DataFrame({"user_id": ["u", "u"], "image_uri": ["/img/0.png", "/img/1.png"],
                          "event": ["click", "click"], "ts": ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]})
    events, _ = resolve_events(frame, manifest, touched)
    assert events["image_id"].to_list() == ["id9", "id1"]


def test_a_vanished_registered_file_is_a_warning(home, resources, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "0.png")
    keep, gone = tmp_path / "keep.csv", tmp_path / "gone.csv"
    for path in (keep, gone):
        pl.DataFrame({"user_id": ["u"], "image_uri": [str(src / "0.png")], "event": ["save"],
                      "ts": ["2026-01-01T00:00:00Z"]}).write_csv(path)
        register_source(home, str(path))
    gone.unlink()
    result = dg.materialize([engagement_events], resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("engagement_events")[0].metadata
    assert meta["missing_sources"].value == 1
    assert read_table(home, "engagement_events").height == 0  # the image was never ingested: counted, dropped
    assert meta["dropped_unknown_image"].value == 1


def test_cli_lists_and_removes_engagement_files(lensless_home, tmp_path, capsys):
    from orchestration.cli import main

    path = tmp_path / "events.csv"
    pl.DataFrame({"user_id": ["u"], "image_id": ["x"], "event": ["save"], "ts": ["2026-01-01"]}).write_csv(path)
    register_source(lensless_home, str(path))
    assert main(["engagement", "list"]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert main(["engagement", "remove", str(path)]) == 0
    assert registered_sources(lensless_home) == []
    assert main(["engagement", "remove", str(path)]) == 2
    assert "is not in engagement_sources" in capsys.readouterr().err
