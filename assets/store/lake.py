"""The lake: every table the pipeline writes, its schema, and one way to read and write it.

No Dagster here. A table is Parquet under `<home>/lake/`: `lake/<name>/<partition>.parquet`
for a table partitioned by batch, `lake/<name>.parquet` otherwise. `TABLES` lists them all
with their schemas; `read_table` and `write_table` are the only readers and writers, so a
table's location and shape live in one place. Canonical pixels are `.npy` per batch
(`pixels_path`). Registries (the watched sources, the engagement files) are append-only logs
in `lake/registries/<name>/` (`read_registry`, `add_to_registry`), so two concurrent ingests
never lose each other's source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl
from upath import UPath

from assets.store.files import (
    Home,
    append_record,
    read_json,
    read_parquet,
    read_records,
    write_parquet,
)
from assets.store.npy import read_npy


@dataclass(frozen=True)
class Table:
    schema: dict[str, pl.DataType]  # column -> dtype; the embedding column's width varies
    partitioned: bool  # one file per image batch


MANIFEST_SCHEMA = {"image_id": pl.Utf8, "row": pl.Int64, "uri": pl.Utf8, "sha256": pl.Utf8,
                   "width": pl.Int64, "height": pl.Int64, "label": pl.Utf8, "batch": pl.Utf8,
                   "ingested_at": pl.Datetime("us", "UTC")}
QUARANTINE_SCHEMA = {"uri": pl.Utf8, "reason": pl.Utf8, "detail": pl.Utf8, "sha256": pl.Utf8, "batch": pl.Utf8}
DUPLICATE_SCHEMA = {"uri": pl.Utf8, "sha256": pl.Utf8, "duplicate_of": pl.Utf8, "batch": pl.Utf8}
SKIPPED_SCHEMA = {"uri": pl.Utf8, "reason": pl.Utf8, "batch": pl.Utf8}
BATCH_SCHEMA = {"uri": pl.Utf8, "label": pl.Utf8, "size": pl.Int64, "mtime": pl.Float64,
                "skipped_reason": pl.Utf8, "source": pl.Utf8}
EMBEDDING_SCHEMA = {"image_id": pl.Utf8, "embedding": pl.List(pl.Float32), "encoder_version": pl.Utf8}
EVENT_SCHEMA = {"user_id": pl.Utf8, "image_id": pl.Utf8, "event": pl.Utf8, "ts": pl.Datetime("us", "UTC")}
# strength: users who co-engaged query and positive (1 for label relevance)
GROUP_SCHEMA = {"split": pl.Utf8, "query": pl.Utf8, "positive": pl.Utf8, "negatives": pl.List(pl.Utf8),
                "strength": pl.Int32}
QUERY_SCHEMA = {"query": pl.Utf8, "relevant": pl.List(pl.Utf8), "source": pl.Utf8}
# source: "index" (a nearest neighbour) or "popular" (a most engaged image of the train split)
CANDIDATE_SCHEMA = {"query": pl.Utf8, "rank": pl.Int64, "image_id": pl.Utf8, "score": pl.Float64, "source": pl.Utf8}
# one row per user with a history: its split, history (oldest first), targets and their gains
USER_SCHEMA = {"user_id": pl.Utf8, "split": pl.Utf8, "history": pl.List(pl.Utf8), "targets": pl.List(pl.Utf8),
               "gains": pl.List(pl.Int32)}
# per task ("images", "users"): each popular share tried for the candidates, its recall@K on
# validation queries, and the one chosen
CANDIDATE_MIX_SCHEMA = {"task": pl.Utf8, "popular_share": pl.Float64, "val_recall": pl.Float64, "chosen": pl.Boolean}
RERANKED_SCHEMA = {"query": pl.Utf8, "image_id": pl.Utf8, "retrieval_rank": pl.Int64, "score": pl.Float64,
                   "rank": pl.Int64}

TABLES: dict[str, Table] = {
    "batch_files": Table(BATCH_SCHEMA, partitioned=True),  # the frozen file list of each batch
    "raw_images": Table(MANIFEST_SCHEMA, partitioned=True),
    "quarantine": Table(QUARANTINE_SCHEMA, partitioned=True),
    "duplicates": Table(DUPLICATE_SCHEMA, partitioned=True),
    "skipped": Table(SKIPPED_SCHEMA, partitioned=True),
    "image_embeddings": Table(EMBEDDING_SCHEMA, partitioned=True),
    "engagement_events": Table(EVENT_SCHEMA, partitioned=False),
    "training_pairs": Table(GROUP_SCHEMA, partitioned=False),
    "user_histories": Table(USER_SCHEMA, partitioned=False),
    "user_pairs": Table(GROUP_SCHEMA, partitioned=False),  # groups of the user task: query = user_id
    "evaluation_queries": Table(QUERY_SCHEMA, partitioned=False),
    "candidate_mix": Table(CANDIDATE_MIX_SCHEMA, partitioned=False),
    "candidates": Table(CANDIDATE_SCHEMA, partitioned=False),
    "reranked_candidates": Table(RERANKED_SCHEMA, partitioned=False),
}
REGISTRIES = ("watched_sources", "engagement_sources")


def _table(name: str) -> Table:
    if name not in TABLES:
        raise ValueError(f"Unknown table {name!r}; valid: {', '.join(TABLES)}")
    return TABLES[name]


def table_path(home: Home, name: str, partition: str | None = None) -> UPath:
    """`lake/<name>/<partition>.parquet` for a partitioned table, `lake/<name>.parquet` otherwise."""
    table = _table(name)
    if table.partitioned != (partition is not None):
        raise ValueError(f"table {name!r} is {'' if table.partitioned else 'not '}partitioned by batch; "
                         f"got partition {partition!r}")
    if partition is None:
        return home.path("lake", f"{name}.parquet")
    return home.path("lake", name, f"{partition}.parquet")


def pixels_path(home: Home, batch: str) -> UPath:
    """Canonical uint8 pixels (N, S, S, 3) of one batch, rows in manifest `row` order."""
    return home.path("lake", "raw_pixels", f"{batch}.npy")


def has_table(home: Home, name: str, partition: str | None = None) -> bool:
    """True when the table (or that partition of it) has been written."""
    if _table(name).partitioned and partition is None:
        return bool(table_partitions(home, name))
    return table_path(home, name, partition).exists()


def table_partitions(home: Home, name: str) -> list[str]:
    """Partition keys that have a file for a partitioned table, sorted."""
    _table(name)
    folder = home.path("lake", name)
    if not folder.exists():
        return []
    return sorted(p.name.removesuffix(".parquet") for p in folder.iterdir()
                  if p.name.endswith(".parquet") and not p.name.startswith("."))


def read_table(home: Home, name: str, partitions: list[str] | None = None,
               exclude: str | None = None) -> pl.DataFrame:
    """A table as one frame.

    Partitioned: the concatenation over `partitions` (default: all), leaving out `exclude`; no
    partition at all gives an empty frame of the table's schema. Unpartitioned: its file;
    FileNotFoundError naming the asset to materialise when it was never written.
    """
    table = _table(name)
    if not table.partitioned:
        if partitions is not None or exclude is not None:
            raise ValueError(f"table {name!r} is not partitioned by batch; got partitions {partitions or [exclude]}")
        path = table_path(home, name)
        if not path.exists():
            raise FileNotFoundError(f"no {name} table at {path}: materialise {name} first")
        return read_parquet(path)
    keys = [k for k in (partitions if partitions is not None else table_partitions(home, name)) if k != exclude]
    frames = [read_parquet(table_path(home, name, k)) for k in keys if table_path(home, name, k).exists()]
    if not frames:
        return pl.DataFrame(schema=table.schema)
    return pl.concat(frames, how="vertical_relaxed")


def write_table(home: Home, name: str, frame: pl.DataFrame, partition: str | None = None) -> UPath:
    """Write a table (or one partition of it) atomically; its columns must be the schema's."""
    table = _table(name)
    if set(frame.columns) != set(table.schema):
        raise ValueError(f"table {name!r} takes columns {list(table.schema)}, got {frame.columns}")
    return write_parquet(frame.select(list(table.schema)), table_path(home, name, partition))


def content_version(frame: pl.DataFrame, columns: list[str], *extra: object) -> str:
    """A short digest of `columns` of `frame` whatever the row order, and of `extra` (the
    settings that shaped the rows): the data version of a table read from outside Dagster, so
    an unchanged table keeps its version and what depends on it stays up to date."""
    rows = frame.select(columns).sort(columns).write_csv()
    return hashlib.sha256("\n".join([rows, *map(repr, extra)]).encode()).hexdigest()[:16]


def catalog(home: Home) -> pl.DataFrame:
    """Every ingested image (all batches, batch order), with `label_code` (-1 when unlabelled)."""
    manifest = read_table(home, "raw_images")
    labels = sorted(x for x in manifest["label"].unique().to_list() if x is not None)
    codes = {lab: i for i, lab in enumerate(labels)}
    return manifest.with_columns(
        pl.col("label").replace_strict(codes, default=-1, return_dtype=pl.Int64).alias("label_code"))


def load_pixels(home: Home, frame: pl.DataFrame) -> np.ndarray:
    """Canonical pixels (N, S, S, 3) uint8 for the rows of `frame` (needs `batch`, `row`), in order."""
    out = None
    for (batch,), group in frame.with_row_index("_pos").group_by(["batch"], maintain_order=True):
        pixels = read_npy(pixels_path(home, batch))  # memory-mapped
        if out is None:
            out = np.empty((frame.height, *pixels.shape[1:]), np.uint8)
        out[group["_pos"].to_numpy()] = pixels[group["row"].to_numpy()]
    return out if out is not None else np.zeros((0, 1, 1, 3), np.uint8)


def _registry_log(home: Home, name: str) -> UPath:
    if name not in REGISTRIES:
        raise ValueError(f"Unknown registry {name!r}; valid: {', '.join(REGISTRIES)}")
    return home.path("lake", "registries", name)


def registry_entries(home: Home, name: str) -> dict[str, dict]:
    """The entries of a registry, in the order they were first added, each with the options
    it was last added with ({} for none): its log replayed after the `lake/<name>.json` list
    of homes from before the log."""
    old = home.path("lake", f"{name}.json")
    entries: dict[str, dict] = dict.fromkeys(read_json(old), {}) if old.exists() else {}
    for record in read_records(_registry_log(home, name)):
        if record["op"] == "add":
            entries[record["entry"]] = record.get("options", {})
        elif record["op"] == "remove":
            entries.pop(record["entry"], None)
    return entries


def read_registry(home: Home, name: str) -> list[str]:
    """The entries of a registry, in the order they were first added."""
    return list(registry_entries(home, name))


def add_to_registry(home: Home, name: str, entry: str, **options) -> None:
    """Add `entry` to a registry unless it is already there with the same `options` (e.g. a
    watched source's label_depth); adding it again with others replaces them."""
    entries = registry_entries(home, name)
    if entries.get(entry) != options:
        append_record(_registry_log(home, name), {"op": "add", "entry": entry, **({"options": options} if options else {})})


def remove_from_registry(home: Home, name: str, entry: str) -> None:
    """Remove `entry` from a registry; KeyError naming the entries when it is not there."""
    entries = read_registry(home, name)
    if entry not in entries:
        raise KeyError(f"{entry!r} is not in {name}; registered: {', '.join(entries) or '(none)'}")
    append_record(_registry_log(home, name), {"op": "remove", "entry": entry})
