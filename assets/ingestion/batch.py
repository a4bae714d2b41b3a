"""Ingest one batch of image files: read, hash, deduplicate, decode, quarantine, store. No Dagster.

`ingest_batch` streams the files of a batch through `decode_image` and appends canonical
pixels row by row to an `.npy` (so memory does not grow with the batch), then returns
four frames: the manifest of ingested images, the quarantine (uri, reason, detail), the
duplicates (uri → the image_id it repeats) and the skipped files. The `image_id` is the
first 16 hex digits of the sha256 of the file's bytes, so it is stable across machines and
re-runs, and deduplication is by exact content.

Files are read, hashed and decoded by a pool of threads (`workers`, default one per usable
CPU): reading waits on IO, and sha256 and Pillow's decoders and resampling release the GIL,
so threads overlap all three without the cost of shipping pixels between processes. The
main thread takes the results in file order, at most `2 * workers` ahead, so rows, dedupe
(the first copy in file order wins) and memory stay as in a serial loop.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice

import fsspec
import numpy as np
import polars as pl

from assets.ingestion.decode import DecodePolicy, Quarantined, decode_image
from assets.store.lake import DUPLICATE_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA
from assets.store.npy import NpyWriter
from index.threads import usable_cpus


@dataclass
class BatchResult:
    """What one batch produced. `pixels` rows line up with `manifest.row`."""

    manifest: pl.DataFrame
    quarantine: pl.DataFrame
    duplicates: pl.DataFrame
    skipped: pl.DataFrame

    def summary(self) -> dict:
        """Counts for the CLI and metadata: ingested, duplicates, quarantined by reason, skipped."""
        reasons = dict(self.quarantine.group_by("reason").len().sort("reason").iter_rows())
        return {"ingested": self.manifest.height, "duplicates": self.duplicates.height,
                "quarantined": reasons, "skipped": self.skipped.height}


READ_FAILED = "could not read"  # how a quarantine detail starts when the file could not be read


def image_id_of(sha256: str) -> str:
    """The stable image id: the first 16 hex digits of the content's sha256."""
    return sha256[:16]


def read_bytes(uri: str) -> bytes:
    """Read a whole file from a local path or any fsspec URL."""
    if "://" not in uri or uri.startswith("file://"):
        with open(uri.removeprefix("file://"), "rb") as f:
            return f.read()
    with fsspec.open(uri, "rb") as f:
        return f.read()


def ingest_batch(
    batch: str,
    entries: pl.DataFrame,
    pixels_path,
    policy: DecodePolicy = DecodePolicy(),
    known: dict[str, str] | None = None,
    previous_ingested_at: dict[str, datetime] | None = None,
    progress: Callable[[int, int], None] | None = None,
    read: Callable[[str], bytes] | None = None,
    workers: int | None = None,
) -> BatchResult:
    """Ingest the files in `entries` (a frozen batch file list) and write pixels to `pixels_path`.

    `known` maps sha256 → image_id for everything ingested by OTHER batches (for dedupe).
    `previous_ingested_at` keeps timestamps stable when a partition is re-run.
    `workers`: threads that read and decode (default: usable CPUs; 1 = all in this thread).
    `read`: uri → bytes (default `read_bytes`).
    """
    read = read or read_bytes
    known = dict(known or {})
    previous_ingested_at = previous_ingested_at or {}
    files = entries.filter(pl.col("skipped_reason").is_null())
    skipped = entries.filter(pl.col("skipped_reason").is_not_null()).select(
        "uri", pl.col("skipped_reason").alias("reason"), pl.lit(batch).alias("batch"))
    now = datetime.now(timezone.utc)
    n = files.height
    writer = NpyWriter(pixels_path, (n, policy.size, policy.size, 3), np.uint8)
    manifest, quarantine, duplicates = [], [], []
    seen: dict[str, str] = {}

    def load(uri: str):
        """(sha, pixels, size) or (sha, Quarantined, None); pixels None for a known duplicate."""
        sha = None
        try:
            try:
                data = read(uri)
            except Exception as e:  # OSError, and what fsspec's HTTP or GCS backends raise instead
                raise Quarantined("undecodable", f"{READ_FAILED}: {type(e).__name__}: {e}") from e
            sha = hashlib.sha256(data).hexdigest() if data else None
            if sha in known:
                return sha, None, None
            pixels, size = decode_image(data, policy)
            return sha, pixels, size
        except Quarantined as q:
            return sha, q, None

    results = _ordered(load, files["uri"].to_list(), workers or usable_cpus())
    try:
        for i, (uri, label, (sha, pixels, size)) in enumerate(
                zip(files["uri"], files["label"], results, strict=True)):
            if progress is not None and (i + 1) % 256 == 0:
                progress(i + 1, n)
            if isinstance(pixels, Quarantined):
                quarantine.append({"uri": uri, "reason": pixels.reason, "detail": pixels.detail,
                                   "sha256": sha, "batch": batch})
                continue
            if sha in known or sha in seen:
                duplicates.append({"uri": uri, "sha256": sha, "duplicate_of": known.get(sha) or seen[sha], "batch": batch})
                continue
            row = len(manifest)
            writer.append(pixels)
            image_id = image_id_of(sha)
            seen[sha] = image_id
            w, h = size
            manifest.append({"image_id": image_id, "row": row, "uri": uri, "sha256": sha, "width": w,
                             "height": h, "label": label, "batch": batch,
                             "ingested_at": previous_ingested_at.get(image_id, now)})
        writer.close()  # the header says how many rows were written
    except BaseException:
        results.close()  # stops the readers now, not when the generator is collected
        writer.abort()
        raise
    if progress is not None:
        progress(n, n)
    return BatchResult(
        manifest=pl.DataFrame(manifest, schema=MANIFEST_SCHEMA),
        quarantine=pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA),
        duplicates=pl.DataFrame(duplicates, schema=DUPLICATE_SCHEMA),
        skipped=skipped.cast(SKIPPED_SCHEMA),
    )


def _ordered(fn: Callable, items: list, workers: int) -> Iterator:
    """fn(item) for each item, in order, computed by `workers` threads at most 2 * workers ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
        pending = deque(pool.submit(fn, item) for item in islice(it, 2 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(fn, item) for item in islice(it, 1))
                yield result
        finally:
            for future in pending:  # stopped early (an error downstream): drop what has not started
                future.cancel()
