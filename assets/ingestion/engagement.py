"""Engagement logs: load, validate and resolve to image ids. No Dagster here.

An engagement file is Parquet or CSV with columns `user_id`, `event`, `ts` and either
`image_id` or `image_uri`. Events are `save` or `click`. A file is read and checked before it
is registered, so a file without those columns never enters the registry. Bad rows do not
reject the file: rows that name an image lensless has not ingested, an unknown event, no
user, or a time that does not parse are kept out of the table but counted by reason and
reported; rows that name a duplicate file resolve to the image it repeats. Registered files are listed in the
`engagement_sources` registry, so every `lensless ingest --engagement FILE` adds to the log.
"""

from __future__ import annotations

import polars as pl
from upath import UPath

from assets.store.files import Home
from assets.store.lake import (
    EVENT_SCHEMA,
    add_to_registry,
    has_table,
    read_registry,
    read_table,
    remove_from_registry,
)

EVENTS = ("save", "click")
REQUIRED = ("user_id", "event", "ts")
_TEXT = (pl.Utf8, pl.Categorical, pl.Enum)
_INTEGER = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
# the types each column may have in a Parquet file (CSV columns are read as text)
COLUMN_KINDS = {"user_id": _TEXT + _INTEGER, "image_id": _TEXT + _INTEGER, "image_uri": _TEXT, "event": _TEXT}
# ISO 8601 forms a text `ts` may take, tried per row (a file may mix them); a time without an
# offset is UTC. Text is normalised first: a space may stand for the "T", and "Z" for +00:00.
TS_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M",
              "%Y-%m-%d")


def registered_sources(home: Home) -> list[str]:
    """Engagement files registered so far, in registration order."""
    return read_registry(home, "engagement_sources")


def register_source(home: Home, path: str) -> None:
    """Check an engagement file (`load_engagement_file` raises naming what is wrong), then add
    it to the registry (idempotent)."""
    load_engagement_file(path)
    add_to_registry(home, "engagement_sources", path)


def unregister_source(home: Home, path: str) -> None:
    """Remove an engagement file from the registry (its events leave the lake at the next
    `engagement_events`)."""
    remove_from_registry(home, "engagement_sources", path)


def engagement_count(home: Home) -> int:
    """Events in the lake's engagement log (0 before there is one)."""
    return read_table(home, "engagement_events").height if has_table(home, "engagement_events") else 0


def load_engagement_file(path: str) -> pl.DataFrame:
    """Read a Parquet or CSV engagement file; raise naming the file and what is wrong."""
    p = UPath(path)
    if not p.exists():
        raise FileNotFoundError(f"engagement file {path!r} does not exist")
    if not p.is_file():  # a folder, or a FIFO or device whose read could block forever
        raise ValueError(f"engagement file {path!r} is not a regular file")
    suffix = p.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"engagement file {path!r} has suffix {suffix!r}; valid: .parquet, .csv")
    try:
        with p.open("rb") as f:
            # CSV columns are read as text: a bad value in one row must not reject the file
            frame = pl.read_parquet(f) if suffix == ".parquet" else pl.read_csv(f, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ValueError(f"engagement file {path!r} cannot be read: {e}") from e
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing or not ({"image_id", "image_uri"} & set(frame.columns)):
        raise ValueError(f"engagement file {path!r} lacks columns {missing or ['image_id or image_uri']}; "
                         f"has {frame.columns}")
    ts = frame.schema["ts"]
    if not (ts == pl.Utf8 or isinstance(ts, pl.Datetime | pl.Date)):
        raise ValueError(f"engagement file {path!r} has ts of type {ts}; valid: date-times, dates, or "
                         "ISO 8601 text (epoch numbers are ambiguous: convert them, e.g. pl.from_epoch(ts, 's'))")
    for column, valid in COLUMN_KINDS.items():
        dtype = frame.schema.get(column)
        if dtype is not None and not any(isinstance(dtype, kind) or dtype == kind for kind in valid):
            raise ValueError(f"engagement file {path!r} has {column} of type {dtype}; valid: "
                             f"{', '.join(getattr(k, '__name__', str(k)) for k in valid)}")
    return frame


def parse_times(text: pl.Expr) -> pl.Expr:
    """UTC date-times from ISO 8601 text, each row in whichever of `TS_FORMATS` it takes;
    null where none parses."""
    norm = text.str.strip_chars().str.replace(r"^(\d{4}-\d\d-\d\d) ", "${1}T").str.replace(r"[Zz]$", "+00:00")
    return pl.coalesce([norm.str.to_datetime(f, time_zone="UTC", strict=False) for f in TS_FORMATS])


def resolve_events(frame: pl.DataFrame, manifest: pl.DataFrame, duplicates: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Map events to ingested image ids. Returns (events in EVENT_SCHEMA, {reason: dropped count})."""
    # a file touched or edited since its batch is listed again: its latest batch says what it is
    uri_to_id = pl.concat([
        manifest.select("uri", "image_id", "batch"),
        duplicates.select("uri", pl.col("duplicate_of").alias("image_id"), "batch"),
    ]).sort("batch").unique("uri", keep="last", maintain_order=True).drop("batch")
    if "image_id" in frame.columns and "image_uri" not in frame.columns:
        events = frame.with_columns(pl.col("image_id").cast(pl.Utf8))
    else:
        events = frame.drop("image_id", strict=False).join(
            uri_to_id.rename({"uri": "image_uri"}), on="image_uri", how="left")
    ts = parse_times(pl.col("ts")) if events.schema["ts"] == pl.Utf8 else pl.col("ts")
    events = events.with_columns(ts.cast(pl.Datetime("us", "UTC")).alias("ts"), pl.col("ts").alias("_raw_ts"),
                                 pl.col("event").cast(pl.Utf8).str.to_lowercase(),
                                 pl.col("user_id").cast(pl.Utf8))
    known_ids = manifest["image_id"].implode()
    # every bad row is counted under its first reason, so the counts add up to the rows dropped
    reasons = {
        "missing_user": pl.col("user_id").is_null(),
        "missing_ts": pl.col("_raw_ts").is_null(),
        "unparseable_ts": pl.col("ts").is_null(),
        "unknown_event": ~pl.col("event").is_in(EVENTS).fill_null(False),
        "unknown_image": pl.col("image_id").is_null() | ~pl.col("image_id").is_in(known_ids),
    }
    bad, dropped = pl.lit(False), {}
    for reason, expr in reasons.items():
        dropped[reason] = events.filter(~bad & expr).height
        bad = bad | expr
    good = events.filter(~bad)
    return good.select(list(EVENT_SCHEMA)).cast(EVENT_SCHEMA).sort("ts", "user_id"), dropped
