"""Ingestion assets: `raw_images` (one dynamic partition per batch) and `engagement_events`."""

import os

import dagster as dg
import numpy as np
import polars as pl
from upath import UPath

from assets.ingestion.batch import ingest_batch
from assets.ingestion.decode import DecodePolicy
from assets.ingestion.engagement import load_engagement_file, registered_sources, resolve_events
from assets.ingestion.sources import read_batch
from assets.plots import contact_sheet, md_image, md_table
from assets.store.files import Home, remove_temporaries
from assets.store.lake import (
    EVENT_SCHEMA,
    content_version,
    pixels_path,
    read_table,
    table_path,
    write_table,
)
from assets.store.lock import named_lock
from assets.store.npy import read_npy
from assets.store.resource import LenslessHome

image_batches = dg.DynamicPartitionsDefinition(name="image_batches")


class IngestRunConfig(dg.Config):
    """Run knobs for ingestion; defaults come from `DecodePolicy`."""

    size: int = DecodePolicy.size
    max_pixels: int = DecodePolicy.max_pixels
    min_side: int = DecodePolicy.min_side
    resize: str = DecodePolicy.resize

    def policy(self) -> DecodePolicy:
        return DecodePolicy(size=self.size, max_pixels=self.max_pixels, min_side=self.min_side, resize=self.resize)


def known_hashes(home: Home, batch: str) -> dict[str, str]:
    """sha256 -> image_id of the images every other batch has ingested."""
    frame = read_table(home, "raw_images", exclude=batch)
    return dict(zip(frame["sha256"], frame["image_id"], strict=True))


@dg.asset(
    partitions_def=image_batches,
    group_name="ingestion",
    kinds={"pillow", "parquet"},
    # bump when decoding changes what a file becomes: the data version includes it, so the
    # batches that are re-ingested hand new pixels on to their embeddings
    code_version="raw_images-v2",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
)
def raw_images(context: dg.AssetExecutionContext, config: IngestRunConfig,
               lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Decoded, validated, deduplicated images of one batch.

    Writes the batch's partition of `raw_images` (manifest: image_id, uri, sha256, size,
    label, batch, ingested_at), its canonical uint8 pixels (`lake/raw_pixels/<batch>.npy`),
    and the `quarantine`, `duplicates` and `skipped` tables of the batch. Re-running is idempotent.
    Batches ingested at once decode side by side; the home's `ingest` lock makes them settle
    in turn which images are new, so an image in two of them is ingested once.
    """
    home, batch = lensless_home.get(), context.partition_key
    entries = read_batch(home, batch)
    old = read_table(home, "raw_images", [batch])
    previous = dict(zip(old["image_id"], old["ingested_at"], strict=True))

    def progress(done: int, total: int) -> None:
        context.log.info(f"batch {batch}: {done}/{total} files decoded")

    def ingest(known: dict[str, str]):
        return ingest_batch(batch, entries, pixels_path(home, batch), config.policy(),
                            known=known, previous_ingested_at=previous, progress=progress)

    stale = sum(remove_temporaries(p) for p in (pixels_path(home, batch), *(
        table_path(home, t, batch) for t in ("quarantine", "duplicates", "skipped", "raw_images"))))
    if stale:
        context.log.info(f"batch {batch}: removed {stale} temporary files an interrupted run left")
    known = known_hashes(home, batch)
    # the manifest marks the batch done and says which pixel row holds which image: it goes
    # before the pixels are replaced, so a re-run killed in between leaves the batch
    # unfinished (resumed by the next command or sensor tick), never mis-aligned
    table_path(home, "raw_images", batch).unlink(missing_ok=True)
    result = ingest(known)  # batches decode side by side; which images are new is settled one at a time
    with named_lock(home, "ingest", f"raw_images {batch} (pid {os.getpid()})"):
        now = known_hashes(home, batch)
        # images another batch ingested meanwhile, or images this batch's duplicates point at
        # that a re-run of their batch has since let go
        raced = set(result.manifest["sha256"]) & (now.keys() - known.keys())
        gone = set(result.duplicates["duplicate_of"]) - set(now.values()) - set(result.manifest["image_id"])
        if raced or gone:
            context.log.info(f"batch {batch}: other batches changed meanwhile ({len(raced)} of its images "
                             f"ingested there, {len(gone)} it repeats gone); deciding again which are new")
            result = ingest(now)
        for table, frame in (("quarantine", result.quarantine), ("duplicates", result.duplicates),
                             ("skipped", result.skipped), ("raw_images", result.manifest)):
            write_table(home, table, frame, batch)  # manifest last: it marks the batch done

    summary = result.summary()
    metadata = {
        "ingested": summary["ingested"], "duplicates": summary["duplicates"],
        "quarantined": sum(summary["quarantined"].values()), "skipped": summary["skipped"],
        "files": entries.height,
        "quarantine_reasons": dg.MetadataValue.md(md_table(
            [{"reason": r, "count": c} for r, c in summary["quarantined"].items()])),
        "dagster/row_count": summary["ingested"],
    }
    if result.manifest.height:
        pixels = read_npy(pixels_path(home, batch))
        pick = np.linspace(0, result.manifest.height - 1, min(32, result.manifest.height)).astype(int)
        labels = result.manifest["label"].fill_null("").to_list()
        sheet = contact_sheet(pixels[pick], [labels[i] for i in pick])
        metadata["contact_sheet"] = dg.MetadataValue.md(md_image(sheet, "sampled thumbnails"))
    context.log.info(f"batch {batch}: {summary}")
    code_version = context.assets_def.code_versions_by_key[context.asset_key]
    version = content_version(result.manifest, ["image_id", "sha256"], config.policy(), code_version)
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata=metadata)


@dg.asset_check(asset=raw_images, description="Quarantined share of the batch stays under 20%.")
def quarantine_rate(context: dg.AssetCheckExecutionContext, lensless_home: LenslessHome) -> dg.AssetCheckResult:
    """Warn when a batch quarantines more than 20% of its image files."""
    home = lensless_home.get()
    batches = [context.partition_key] if context.has_partition_key else None
    manifest = read_table(home, "raw_images", batches)
    quarantined = read_table(home, "quarantine", batches)
    total = manifest.height + quarantined.height
    rate = quarantined.height / total if total else 0.0
    return dg.AssetCheckResult(passed=rate <= 0.2, severity=dg.AssetCheckSeverity.WARN,
                               metadata={"quarantine_rate": rate, "threshold": 0.2})


@dg.asset_check(asset=raw_images, blocking=True, description="image_id and sha256 are unique across all batches.")
def unique_image_ids(context: dg.AssetCheckExecutionContext, lensless_home: LenslessHome) -> dg.AssetCheckResult:
    """Fail when any image_id or sha256 appears twice in the manifest (dedupe broke)."""
    manifest = read_table(lensless_home.get(), "raw_images")
    dup_ids = manifest.height - manifest["image_id"].n_unique()
    dup_sha = manifest.height - manifest["sha256"].n_unique()
    return dg.AssetCheckResult(passed=dup_ids == 0 and dup_sha == 0,
                               metadata={"duplicate_image_ids": dup_ids, "duplicate_sha256": dup_sha})


class EngagementRunConfig(dg.Config):
    """Engagement files to read; empty means every registered file (demo and `--engagement`)."""

    paths: list[str] = []


@dg.asset(
    group_name="ingestion",
    kinds={"polars", "parquet"},
    deps=[raw_images],
    code_version="engagement_events-v2",
)
def engagement_events(context: dg.AssetExecutionContext, config: EngagementRunConfig,
                      lensless_home: LenslessHome) -> dg.MaterializeResult:
    """Validated save/click events (user_id, image_id, event, ts) over all ingested images.

    Events for unknown images are counted and reported in metadata, not silently dropped.
    """
    home = lensless_home.get()
    paths = config.paths or registered_sources(home)
    manifest, duplicates = read_table(home, "raw_images"), read_table(home, "duplicates")
    frames, dropped, missing = [], {}, []
    for path in paths:
        if not UPath(path).exists():  # registered once, gone since: its events leave the log
            context.log.warning(f"engagement file {path} is registered but no longer exists; skipped "
                                f"(`lensless engagement remove {path}` unregisters it)")
            missing.append(path)
            continue
        events, lost = resolve_events(load_engagement_file(path), manifest, duplicates)
        frames.append(events)
        for reason, n in lost.items():
            dropped[reason] = dropped.get(reason, 0) + n
        context.log.info(f"{path}: {events.height} events kept, dropped {lost}")
    events = pl.concat(frames) if frames else pl.DataFrame(schema=EVENT_SCHEMA)
    # one event listed twice (overlapping exports, a file registered under two names) counts once
    unique = events.unique(maintain_order=True)
    if unique.height < events.height:
        dropped["duplicate_event"] = events.height - unique.height
        context.log.info(f"{events.height - unique.height} events listed more than once were kept once")
    events = unique
    write_table(home, "engagement_events", events)
    version = content_version(events, ["user_id", "image_id", "event", "ts"])
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "events": events.height,
        "users": events["user_id"].n_unique(),
        "images_engaged": events["image_id"].n_unique(),
        "sources": dg.MetadataValue.md("\n".join(f"- `{p}`" for p in paths) or "_(none registered)_"),
        "dropped": dg.MetadataValue.md(md_table([{"reason": r, "rows": n} for r, n in dropped.items()])),
        "dropped_unknown_image": dropped.get("unknown_image", 0),
        "missing_sources": len(missing),
        "dagster/row_count": events.height,
    })

