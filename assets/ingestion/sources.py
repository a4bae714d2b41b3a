"""Image sources and the batches cut from them. No Dagster here.

A source is a local folder, any fsspec URL (`s3://…`, `gs://…`, `memory://…`) or `demo`
(the built-in catalog, rendered once under `<home>/sources/demo`). `list_source`
walks it recursively WITHOUT decoding anything: it returns the candidate image files and,
separately, every other file with the reason it was skipped, so nothing disappears silently.

A batch is the unit of ingestion and the key of the `image_batches` dynamic partition. Its
file list is frozen in the `batch_files` table when the batch is created, so
re-running the partition later ingests exactly the same files.

Labels come from folders: with `label_depth=1` the label is the first-level subfolder name
(`root/shoe/a.jpg` → `shoe`); `label_depth=2` uses the second level; files directly at the
root get no label. `label_depth=0` turns labels off.

Modified and deleted files: a batch records (uri, size, mtime). A file whose size or mtime
changed is listed again as new; its bytes are hashed at ingestion, so changed content
becomes a new image and unchanged content is recorded as a duplicate. A deleted file is
not listed again, and nothing already ingested is removed: the lake is append-only.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

import fsspec
import polars as pl
from upath import UPath

from assets.ingestion.batch import READ_FAILED
from assets.ingestion.decode import SUPPORTED_EXTENSIONS
from assets.store.files import Home, is_local, read_parquet, upload_tree, write_parquet
from assets.store.lake import (
    BATCH_SCHEMA,
    add_to_registry,
    read_registry,
    read_table,
    registry_entries,
    table_partitions,
    write_table,
)

DEMO = "demo"
WATCH_ENV = "LENSLESS_WATCH"


@dataclass(frozen=True)
class Listing:
    """What a source holds: image candidates and skipped files, as frames of BATCH_SCHEMA."""

    files: pl.DataFrame
    skipped: pl.DataFrame


def demo_root(home: Home) -> UPath:
    """Where demo catalogs are rendered, one folder per (images, size, seed)."""
    return home.path("sources", "demo")


def render_demo(home: Home, n_images: int, size: int = 224, seed: int = 0, progress=None) -> str:
    """Render the demo catalog under `demo_root` and register its engagement file; returns
    its folder, which is then ingested like any other source.

    Each (images, size, seed) gets its own folder, so a smaller demo never picks up the files
    of a larger one; unchanged files are kept. The renderer writes local files, into
    `Home.cache` (the home itself when local); for a home on object storage they are then
    uploaded, with the catalog's and engagement's image URIs pointing at the uploaded copies.
    """
    from assets.demo.catalog import DemoCatalogConfig, write_demo_catalog
    from assets.ingestion.engagement import register_source

    name = f"n{n_images}-s{size}-seed{seed}"
    dest, local = demo_root(home) / name, home.cache("sources", "demo", name)
    print(f"demo catalog: {n_images} images at {size} px → {dest}", file=sys.stderr)
    write_demo_catalog(str(local), DemoCatalogConfig(n_images=n_images, size=size, seed=seed), progress=progress)
    if not home.local:
        tables = {"catalog.parquet": "uri", "engagement.parquet": "image_uri"}
        uploaded = upload_tree(local, dest, skip_same_size=True, exclude=set(tables))
        for table, column in tables.items():
            frame = read_parquet(local / table)
            write_parquet(frame.with_columns(pl.col(column).str.replace(str(local), dest.as_posix(), literal=True)),
                          dest / table)
        print(f"demo catalog: uploaded {uploaded} new images to {dest}", file=sys.stderr)
    register_source(home, str(dest / "engagement.parquet"))
    return str(dest)


def resolve_source(source: str) -> str:
    """Turn a user's source argument into a URL or absolute path; `demo` maps to its folder."""
    if source == DEMO:
        raise ValueError("the 'demo' source is rendered by `lensless ingest demo` / `lensless demo` first")
    if not source.strip():
        raise ValueError("the source is empty; pass a folder, an fsspec URL such as s3://bucket/prefix, or 'demo'")
    if "://" in source:
        if not source.split("://", 1)[1].strip("/"):
            raise ValueError(f"source {source!r} names no folder or bucket; e.g. s3://bucket/prefix or file:///data/images")
        return source
    path = os.path.abspath(os.path.expanduser(source))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"source {source!r} is not a directory (resolved to {path}); "
                                "pass a folder, an fsspec URL such as s3://bucket/prefix, or 'demo'")
    return path


def _label(rel_parts: list[str], depth: int) -> str | None:
    # rel_parts = subfolders + filename; a file at the root has no subfolder.
    if depth <= 0 or len(rel_parts) - 1 < depth:
        return None
    return rel_parts[depth - 1]


def list_source(source: str, label_depth: int = 1) -> Listing:
    """List every file under `source` (recursively) without reading any of them; the folder
    `label_depth` levels down names a file's label (0: no labels)."""
    if label_depth < 0:
        raise ValueError(f"--label-depth must be >= 0 (0: no labels), got {label_depth}")
    root = resolve_source(source)
    if "://" not in root:  # a local folder; fsspec would read a "::" in its name as a chain of URLs
        local, root_path = True, root
    else:
        try:
            fs, root_path = fsspec.core.url_to_fs(root)  # some filesystems (ftp) connect here
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            local = protocol in ("file", "local")
            found = {} if local else fs.find(root_path, detail=True)
        except OSError as e:  # a host that refuses or does not answer, a denied bucket
            raise ValueError(f"source {source!r} could not be listed ({type(e).__name__}: {e}): check the URL, "
                             "that the host answers and the credentials") from e
        if found.get(root_path.rstrip("/"), {}).get("type") == "file":
            raise ValueError(f"source {source!r} is a file, not a folder: pass the folder or prefix that holds it")
    rows = []  # (uri, path relative to the root, size, mtime, reason it is skipped or None)
    if local:
        rows = _walk_local(root_path)
    else:
        for path, info in sorted(found.items()):
            if info.get("type") == "directory":
                continue
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
            if isinstance(mtime, datetime):
                mtime = mtime.timestamp()
            uri = fs.unstrip_protocol(path)
            rows.append((uri, os.path.relpath(path, root_path.rstrip("/")), int(info.get("size") or 0), float(mtime),
                         None))
    records = []
    for uri, rel, size, mtime, problem in rows:
        parts = rel.replace(os.sep, "/").split("/")
        ext = os.path.splitext(parts[-1])[1].lower()
        hidden = any(part.startswith(".") for part in parts)  # a hidden file, or one in a hidden folder
        reason = problem or (None if (ext in SUPPORTED_EXTENSIONS and not hidden) else (
            "hidden_file" if hidden else f"unsupported_extension:{ext or '(none)'}"))
        records.append({"uri": uri, "label": _label(parts, label_depth), "size": size,
                        "mtime": float(mtime), "skipped_reason": reason, "source": source})
    frame = pl.DataFrame(records, schema=BATCH_SCHEMA)
    return Listing(files=frame.filter(pl.col("skipped_reason").is_null()),
                   skipped=frame.filter(pl.col("skipped_reason").is_not_null()))


def known_batches(home: Home) -> list[str]:
    """Every batch that has a frozen file list, oldest first."""
    return table_partitions(home, "batch_files")


def known_files(home: Home) -> set[tuple[str, int, float]]:
    """(uri, size, mtime) of every file already put in a batch, skipped ones included."""
    frame = read_table(home, "batch_files")
    return set(zip(frame["uri"].to_list(), frame["size"].to_list(), frame["mtime"].to_list(), strict=True))


def _walk_local(root: str) -> list[tuple]:
    """Rows of `list_source` for a local folder. Nothing that cannot be read aborts the listing:
    an unreadable folder, a dangling or looping link, a link out of the source, a linked
    folder (not followed) or a file that is not a regular file (a FIFO, a socket, a device) is
    a skipped row with its reason."""
    rows = []
    real_root = os.path.realpath(root)

    def skipped(path: str, reason: str) -> None:
        rows.append((path, os.path.relpath(path, root), 0, 0.0, reason))

    def unreadable(error: OSError) -> None:
        skipped(error.filename, f"unreadable_folder:{error.strerror or error}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        for name in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            skipped(os.path.join(dirpath, name), "linked_folder_not_followed")
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                full.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8 in its name (or its folder's)
                skipped(os.fsencode(full).decode("utf-8", "backslashreplace"), "undecodable_name")
                continue
            if os.path.islink(full) and not os.path.realpath(full).startswith(real_root + os.sep):
                skipped(full, "link_outside_source")
                continue
            try:
                st = os.stat(full)
            except OSError as e:  # a dangling link, a link loop, a file gone since the walk
                skipped(full, f"unreadable_file:{e.strerror or e}")
                continue
            if not stat.S_ISREG(st.st_mode):  # a FIFO, socket or device: reading it could block forever
                skipped(full, "not_a_regular_file")
                continue
            rows.append((full, os.path.relpath(full, root), st.st_size, st.st_mtime, None))
    return rows


def unfinished_batches(home: Home) -> list[str]:
    """Batches whose file list was frozen but whose manifest was never written (the manifest
    is written last, so these are batches a crash or a kill interrupted), oldest first."""
    done = set(table_partitions(home, "raw_images"))
    return [b for b in known_batches(home) if b not in done]


def orphaned_batches(home: Home) -> list[str]:
    """Batches that hold a duplicate of an image no batch holds any more: a re-run of the
    batch that held it let it go (its file deleted or changed, or a stricter policy). Each is
    ingested again, and then keeps its copy (`raw_images` sees the image gone)."""
    held = read_table(home, "raw_images")["image_id"].implode()
    dangling = read_table(home, "duplicates").filter(~pl.col("duplicate_of").is_in(held))
    return sorted(set(dangling["batch"].to_list()))


def batches_to_ingest_again(home: Home) -> dict[str, str]:
    """{batch: why} of the batches a command or the sensor ingests again: those an ingest did
    not finish (oldest first), then those whose duplicates lost the image they repeat."""
    again = dict.fromkeys(unfinished_batches(home), "an earlier ingest did not finish")
    for batch in orphaned_batches(home):
        again.setdefault(batch, "it holds copies of images a re-run of another batch let go")
    return again


READ_ATTEMPTS = 3  # failed reads of an unchanged remote file before it waits for a change


def new_entries(home: Home, listing: Listing) -> pl.DataFrame:
    """Files and skipped files of a listing that are in no batch yet (new, or modified), and
    files whose last attempt could not be read but can be now (`retry_unreadable`)."""
    known = known_files(home)
    retry = retry_unreadable(home, listing.files["uri"].to_list())
    frame = pl.concat([listing.files, listing.skipped])
    keep = [(u, s, m) not in known or u in retry
            for u, s, m in zip(frame["uri"], frame["size"], frame["mtime"], strict=True)]
    return frame.filter(pl.Series(keep, dtype=pl.Boolean))


def retry_unreadable(home: Home, uris: list[str]) -> set[str]:
    """Those of `uris` that were quarantined because they could not be read (a permission, a
    network error), were not ingested since, and may be readable now: a local file this
    process may read (`os.access`), a remote one that failed fewer than READ_ATTEMPTS times
    (its error may have been transient; one it never lets us read, e.g. AccessDenied, then
    waits for a change of size or mtime like any file). A chmod does not change a file's
    size or mtime, so without this it would never be retried."""
    quarantine = read_table(home, "quarantine")
    failed = quarantine.filter(pl.col("detail").str.starts_with(READ_FAILED) & pl.col("uri").is_in(uris))
    if not failed.height:
        return set()
    attempts = dict(failed.group_by("uri").len().iter_rows())
    done = set(read_table(home, "raw_images")["uri"].to_list()) | set(read_table(home, "duplicates")["uri"].to_list())
    return {u for u, n in attempts.items() if u not in done and _may_read_now(u, n)}


def _may_read_now(uri: str, attempts: int) -> bool:
    return os.access(UPath(uri).path, os.R_OK) if is_local(uri) else attempts < READ_ATTEMPTS


def new_batch_key(entries: pl.DataFrame, now: datetime | None = None) -> str:
    """A sortable, content-derived partition key: `b<UTC time>-<hash of the file list>`."""
    now = now or datetime.now(timezone.utc)
    digest = hashlib.sha256("\n".join(sorted(entries["uri"].to_list())).encode()).hexdigest()[:8]
    return f"b{now.strftime('%Y%m%dT%H%M%S')}-{digest}"


def cut_batches(entries: pl.DataFrame, max_files: int) -> list[pl.DataFrame]:
    """Split new entries into batches of at most `max_files` image files (skipped ones ride along)."""
    if max_files <= 0:
        raise ValueError(f"max_files must be positive, got {max_files}")
    files = entries.filter(pl.col("skipped_reason").is_null())
    skipped = entries.filter(pl.col("skipped_reason").is_not_null())
    chunks = [files.slice(i, max_files) for i in range(0, files.height, max_files)] or [files]
    chunks[0] = pl.concat([chunks[0], skipped])
    return [c for c in chunks if c.height]


def register_batch(home: Home, entries: pl.DataFrame, key: str | None = None) -> str:
    """Freeze a batch's file list and return its key (the new dynamic partition). A frozen
    batch is never overwritten: a generated key that exists already (the same files listed
    again within a second, e.g. a retried read) gets a suffix, an explicit one is refused."""
    known = set(known_batches(home))
    if key is not None and key in known:
        raise ValueError(f"batch {key!r} exists and its file list is frozen; pass a new key or none")
    if key is None:
        key = base = new_batch_key(entries)
        for n in itertools.count(2):
            if key not in known:
                break
            key = f"{base}-{n}"
    write_table(home, "batch_files", entries.select(list(BATCH_SCHEMA)), key)
    return key


def read_batch(home: Home, batch: str) -> pl.DataFrame:
    """The frozen file list of `batch`."""
    if batch not in known_batches(home):
        raise KeyError(f"unknown batch {batch!r}; known: {', '.join(known_batches(home)) or '(none)'}")
    return read_table(home, "batch_files", [batch])


def watched_sources(home: Home) -> list[str]:
    """Sources the sensor lists: `$LENSLESS_WATCH` (comma-separated) plus every ingested source."""
    env = [s.strip() for s in os.environ.get(WATCH_ENV, "").split(",") if s.strip()]
    return list(dict.fromkeys(env + read_registry(home, "watched_sources")))


def register_watched(home: Home, source: str, label_depth: int = 1) -> None:
    """Remember a source so `new_images_sensor` keeps watching it (idempotent): as an absolute
    path or URL, which the sensor's working directory does not change, and with the label
    depth its files were listed with."""
    add_to_registry(home, "watched_sources", resolve_source(source), label_depth=label_depth)


def watched_label_depths(home: Home) -> dict[str, int]:
    """The label depth each registered source was ingested with (a `$LENSLESS_WATCH` source,
    absent here, is listed at depth 1)."""
    return {source: options.get("label_depth", 1)
            for source, options in registry_entries(home, "watched_sources").items()}
