"""Engagement logs: load, validate and resolve to image ids. No Dagster here.

An engagement file is Parquet or CSV with columns `user_id`, `event`, `ts` and either
`image_id` or `image_uri`. Events are `save` or `click`. Rows that name an image lensless
has not ingested are kept out of the table but counted (by reason) and reported; rows that
name a duplicate file resolve to the image it repeats. Registered files are listed in the
`engagement_sources` registry, so every `lensless ingest --engagement FILE` adds to the log.
"""

from __future__ import annotations

import polars as pl
from upath import UPath

from assets.store.files import Home
from assets.store.lake import EVENT_SCHEMA, add_to_registry, has_table, read_registry, read_table

EVENTS = ("save", "click")
REQUIRED = ("user_id", "event", "ts")


def registered_sources(home: Home) -> list[str]:
    """Engagement files registered so far, in registration order."""
    return read_registry(home, "engagement_sources")


def register_source(home: Home, path: str) -> None:
    """Add an engagement file to the registry (idempotent)."""
    add_to_registry(home, "engagement_sources", path)


def engagement_count(home: Home) -> int:
    """Events in the lake's engagement log (0 before there is one)."""
    return read_table(home, "engagement_events").height if has_table(home, "engagement_events") else 0


def load_engagement_file(path: str) -> pl.DataFrame:
    """Read a Parquet or CSV engagement file; raise naming the file and what is wrong."""
    p = UPath(path)
    if not p.exists():
        raise FileNotFoundError(f"engagement file {path!r} does not exist")
    suffix = p.suffix.lower()
    with p.open("rb") as f:
        if suffix == ".parquet":
            frame = pl.read_parquet(f)
        elif suffix == ".csv":
            frame = pl.read_csv(f, try_parse_dates=True)
        else:
            raise ValueError(f"engagement file {path!r} has suffix {suffix!r}; valid: .parquet, .csv")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing or not ({"image_id", "image_uri"} & set(frame.columns)):
        raise ValueError(f"engagement file {path!r} lacks columns {missing or ['image_id or image_uri']}; "
                         f"has {frame.columns}")
    return frame


def resolve_events(frame: pl.DataFrame, manifest: pl.DataFrame, duplicates: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Map events to ingested image ids. Returns (events in EVENT_SCHEMA, {reason: dropped count})."""
    uri_to_id = pl.concat([
        manifest.select("uri", "image_id"),
        duplicates.select("uri", pl.col("duplicate_of").alias("image_id")),
    ])
    if "image_id" in frame.columns and "image_uri" not in frame.columns:
        events = frame.with_columns(pl.col("image_id").cast(pl.Utf8))
    else:
        events = frame.drop("image_id", strict=False).join(
            uri_to_id.rename({"uri": "image_uri"}), on="image_uri", how="left")
    ts = pl.col("ts")
    if events.schema["ts"] == pl.Utf8:
        ts = ts.str.to_datetime(time_zone="UTC")
    events = events.with_columns(ts.cast(pl.Datetime("us", "UTC")).alias("ts"),
                                 pl.col("event").cast(pl.Utf8).str.to_lowercase(),
                                 pl.col("user_id").cast(pl.Utf8))
    known_ids = manifest["image_id"].implode()
    dropped = {
        "unknown_image": events.filter(pl.col("image_id").is_null() | ~pl.col("image_id").is_in(known_ids)).height,
        "unknown_event": events.filter(~pl.col("event").is_in(EVENTS)).height,
        "missing_user_or_ts": events.filter(pl.col("user_id").is_null() | pl.col("ts").is_null()).height,
    }
    good = events.filter(pl.col("image_id").is_in(known_ids) & pl.col("event").is_in(EVENTS)
                         & pl.col("user_id").is_not_null() & pl.col("ts").is_not_null())
    return good.select(list(EVENT_SCHEMA)).cast(EVENT_SCHEMA).sort("ts", "user_id"), dropped
