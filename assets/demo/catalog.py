"""The demo catalog: a deterministic, seeded stand-in for a company's images and engagement logs,
so the whole pipeline runs anywhere with nothing to download. ``write_demo_catalog`` renders
photos of objects from several categories and styles (see ``assets.demo.render``) into
``<dest>/<category>/<category>_<index>.jpg``, and ``generate_engagement`` simulates users whose
saves and clicks follow the few categories they shop and, within them, taste clusters that cut
across categories: a taste is a palette family, visible in the pixels but secondary to the
object's shape. Co-engagement therefore carries signal beyond visual (category) similarity that
a reranker can learn from image content. The same
config gives byte-identical files and identical engagement. This module never imports dagster.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from assets.demo.render import (
    CATEGORIES,
    RENDER_VERSION,
    ImageSpec,
    draw_spec,
    image_rng,
    render_image,
)
from assets.store.files import write_bytes


@dataclass(frozen=True)
class DemoCatalogConfig:
    """Size and randomness of the demo catalog; the defaults live only here."""

    n_images: int = 5000  # images rendered; categories cycle with the index
    size: int = 224  # rendered side in px (square)
    seed: int = 0  # one seed for every image and for the engagement
    # Engagement density decides whether held-out co-engagement can tell rankers apart (too
    # sparse and a query's relevant set is near-random). Both scale with the catalog (None =
    # n_images / 5 users, n_images / 50 clicks each), so a small demo is not saturated either.
    n_users: int | None = None  # simulated users
    events_per_user: int | None = None  # mean clicks per user (saves come on top of some clicks)
    jpeg_quality_range: tuple[int, int] = (55, 95)  # inclusive; each image draws its quality
    workers: int = 2  # processes used to render; 1 renders in this process

    def __post_init__(self) -> None:
        if self.n_users is None:
            object.__setattr__(self, "n_users", max(100, self.n_images // 5))
        if self.events_per_user is None:
            object.__setattr__(self, "events_per_user", max(5, self.n_images // 50))
        checks = [
            ("n_images", self.n_images, self.n_images >= 1, "must be >= 1"),
            ("size", self.size, self.size >= 32, "must be >= 32 px"),
            ("seed", self.seed, self.seed >= 0, "must be >= 0"),
            ("n_users", self.n_users, self.n_users >= 1, "must be >= 1"),
            ("events_per_user", self.events_per_user, self.events_per_user >= 1, "must be >= 1"),
            ("workers", self.workers, self.workers >= 1, "must be >= 1"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise ValueError(f"DemoCatalogConfig.{name} {rule}, got {value!r}")
        q = self.jpeg_quality_range
        if len(q) != 2 or not 1 <= q[0] <= q[1] <= 100:
            raise ValueError(
                f"DemoCatalogConfig.jpeg_quality_range must be (lo, hi) with 1 <= lo <= hi <= 100, "
                f"got {q!r}"
            )


CATALOG_SCHEMA = {
    "uri": pl.String,  # absolute posix path of the JPEG
    "label": pl.String,  # category, also the parent folder's name
    "style": pl.String,  # "<palette>-<pattern>"
    "taste": pl.Int64,  # taste cluster id, a function of the palette only
    "index": pl.Int64,  # the image's seed index: (seed, index) determines its pixels
}
ENGAGEMENT_SCHEMA = {
    "user_id": pl.String,
    "image_uri": pl.String,
    "event": pl.String,  # "click" or "save"
    "ts": pl.Datetime("us", "UTC"),
}
_ENGAGEMENT_STREAM = 2  # keeps the engagement RNG apart from every image's RNG
_START_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
_SPAN_US = 60 * 86_400_000_000  # events spread over 60 days
_TASTE_BOOST = 30.0  # an in-taste image is up to 31x as likely to be clicked
# Users shop a few categories (as on a real catalog, where co-engagement follows visual
# similarity first) and, within them, their taste: retrieval (category) beats random, and a
# ranker that reads taste has room to win (README, "Why the defaults").
_CATEGORY_ALPHA = 0.2  # Dirichlet concentration of a user's category affinity (lower: fewer categories)
_CATEGORY_FLOOR = 0.02  # share of an image's weight that does not depend on its category
_EXPLORE = 0.1  # share of clicks on a uniformly random image
_SAVE_IN_TASTE, _SAVE_OUT_OF_TASTE = 0.25, 0.05  # chance that a click is followed by a save


def image_path(dest_dir: Path, spec: ImageSpec) -> Path:
    """Where image ``spec`` lives: ``<dest>/<category>/<category>_<index:06d>.jpg``."""
    return dest_dir / spec.category / f"{spec.category}_{spec.index:06d}.jpg"


def _render_and_write(task: tuple) -> tuple[tuple, str]:
    """Renders one image and writes it unless the same bytes are already there.

    Skips rendering when the file's digest matches the one recorded last time. Returns the
    catalog row and the file's sha256.
    """
    dest, seed, size, quality_range, index, known_digest = task
    if known_digest is not None:
        spec = draw_spec(image_rng(seed, index), index, quality_range)
        path = image_path(Path(dest), spec)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == known_digest:
            return _row(path, spec), known_digest
    spec, data = render_image(seed, index, size, quality_range)
    path = image_path(Path(dest), spec)
    _write_if_changed(data, path, fsync=False)  # readers never see a half-written JPEG; a lost one is re-rendered
    return _row(path, spec), hashlib.sha256(data).hexdigest()


def _row(path: Path, spec: ImageSpec) -> tuple:
    return (path.as_posix(), spec.category, spec.style, spec.taste, spec.index)


def _init_worker() -> None:
    # Let Pillow reuse freed image memory: without it, page faults cost a fifth of the time.
    from PIL import Image

    Image.core.set_blocks_max(128)


def write_demo_catalog(
    dest_dir: str | Path,
    config: DemoCatalogConfig = DemoCatalogConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Renders the demo catalog into ``dest_dir`` and returns one row per image.

    Writes ``<dest>/<category>/<category>_<index:06d>.jpg``, ``<dest>/catalog.parquet`` (the
    returned frame: uri, label, style, taste, index; sorted by index) and
    ``<dest>/engagement.parquet`` (see ``generate_engagement``). Idempotent: a file whose sha256
    matches the digest recorded in ``<dest>/.demo_manifest.json`` by an earlier run with the
    same renderer, seed, size and quality range is not rendered again; other files are rendered, and
    rewritten atomically only when their bytes differ. Files of an earlier, larger catalog are
    not deleted. ``progress(done, total)`` is called about 100 times, in this process. Rendering
    uses ``config.workers`` spawned processes.
    """
    dest = Path(dest_dir).resolve()
    for category in CATEGORIES:
        (dest / category).mkdir(parents=True, exist_ok=True)
    q = (int(config.jpeg_quality_range[0]), int(config.jpeg_quality_range[1]))
    render_key = {
        "render_version": RENDER_VERSION,
        "seed": config.seed,
        "size": config.size,
        "jpeg_quality_range": list(q),
    }
    known = _read_manifest(dest / _MANIFEST, render_key)
    tasks = [
        (str(dest), config.seed, config.size, q, i, known.get(str(i)))
        for i in range(config.n_images)
    ]
    total, every = len(tasks), max(1, len(tasks) // 100)
    rows, digests = [], {}

    def collect(results) -> None:
        for row, digest in results:
            rows.append(row)
            digests[str(row[4])] = digest
            if progress is not None and (len(rows) % every == 0 or len(rows) == total):
                progress(len(rows), total)

    workers = min(config.workers, total)
    if workers == 1:
        collect(map(_render_and_write, tasks))
    else:
        # spawn, not fork: callers (Dagster) run threads, and forking a threaded process can hang
        chunk = max(1, min(64, total // (workers * 8)))
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            collect(pool.imap_unordered(_render_and_write, tasks, chunksize=chunk))
            # let the workers exit on their own: terminate(), what leaving the block calls, stops
            # them by SIGTERM and waits forever for one that a parent's ignored SIGTERM left alive
            pool.close()
            pool.join()
    catalog = pl.DataFrame(sorted(rows, key=lambda r: r[4]), schema=CATALOG_SCHEMA, orient="row")
    _write_if_changed(_parquet_bytes(catalog), dest / "catalog.parquet")
    _write_if_changed(_parquet_bytes(generate_engagement(catalog, config)), dest / "engagement.parquet")
    manifest = {**render_key, "sha256": dict(sorted({**known, **digests}.items(), key=lambda kv: int(kv[0])))}
    _write_if_changed(json.dumps(manifest, indent=2).encode(), dest / _MANIFEST)
    return catalog


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def _write_if_changed(data: bytes, path: Path, fsync: bool = True) -> None:
    """Write atomically unless the file already holds these bytes: a re-rendered catalog keeps
    its files' mtimes, so a folder ingest does not see them as new."""
    if not (path.is_file() and path.read_bytes() == data):
        write_bytes(data, path, fsync)


_MANIFEST = ".demo_manifest.json"


def _read_manifest(path: Path, render_key: dict) -> dict[str, str]:
    """Digests by index recorded for the same render settings; empty when there are none."""
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if {k: manifest.get(k) for k in render_key} != render_key:
        return {}
    return manifest.get("sha256", {})


def generate_engagement(catalog: pl.DataFrame, config: DemoCatalogConfig) -> pl.DataFrame:
    """Simulates clicks and saves of ``config.n_users`` users over 60 days.

    Each user likes one or two taste clusters (weights summing to 1), has a peaked Dirichlet
    affinity over categories (most users shop two or three) and follows item popularity; 10%
    of clicks explore uniformly. A click is
    followed by a save with probability 0.25 in taste and 0.05 otherwise, so saves are rarer
    than clicks and mark taste more sharply. Clicks come in sessions spread over 60 days from
    2025-01-01 UTC. Needs catalog columns uri, label and taste; the result depends on the set of
    rows, not their order. Returns user_id, image_uri, event ("click" | "save") and ts (UTC, us),
    sorted by ts.
    """
    missing = [c for c in ("uri", "label", "taste") if c not in catalog.columns]
    if missing:
        raise ValueError(
            f"catalog lacks columns {missing}; needs uri, label, taste; has {catalog.columns}"
        )
    if catalog.height == 0:
        raise ValueError("catalog is empty: no images to engage with")
    items = catalog.select("uri", "label", "taste").sort("uri")
    uris = items["uri"].to_numpy()
    _, label_of = np.unique(items["label"].to_numpy(), return_inverse=True)
    _, taste_of = np.unique(items["taste"].to_numpy(), return_inverse=True)
    n_items, n_labels, n_tastes = len(uris), int(label_of.max()) + 1, int(taste_of.max()) + 1
    rng = np.random.default_rng([config.seed, _ENGAGEMENT_STREAM])
    popularity = rng.lognormal(0.0, 0.5, n_items)
    users, picks_all, saves_all, ts_all = [], [], [], []
    for u in range(config.n_users):
        k = min(n_tastes, 1 if rng.random() < 0.6 else 2)
        taste_w = np.zeros(n_tastes)
        taste_w[rng.choice(n_tastes, k, replace=False)] = rng.dirichlet(np.full(k, 2.0))
        label_w = rng.dirichlet(np.full(n_labels, _CATEGORY_ALPHA)) * n_labels  # mean 1
        weight = (
            popularity
            * (1 + _TASTE_BOOST * taste_w[taste_of])
            * (_CATEGORY_FLOOR + (1 - _CATEGORY_FLOOR) * label_w[label_of])
        )
        n = max(1, int(rng.poisson(config.events_per_user * rng.gamma(4.0, 0.25))))
        picks = np.where(
            rng.random(n) < _EXPLORE,
            rng.integers(0, n_items, n),
            rng.choice(n_items, n, p=weight / weight.sum()),
        )
        in_taste = taste_w[taste_of[picks]] > 0
        saved = rng.random(n) < np.where(in_taste, _SAVE_IN_TASTE, _SAVE_OUT_OF_TASTE)
        n_sessions = 1 + int(rng.poisson(n / 10))
        starts = rng.integers(0, _SPAN_US - 3_600_000_000, n_sessions)
        lengths = rng.exponential(900e6, n_sessions)  # sessions last ~15 minutes
        session = rng.integers(0, n_sessions, n)
        clicks = starts[session] + (rng.random(n) * lengths[session]).astype(np.int64)
        save_ts = (
            clicks[saved] + 1_000_000 + rng.exponential(20e6, int(saved.sum())).astype(np.int64)
        )
        users.append(np.full(n + int(saved.sum()), u))
        picks_all += [picks, picks[saved]]
        saves_all += [np.zeros(n, bool), np.ones(int(saved.sum()), bool)]
        ts_all += [clicks, save_ts]
    user = np.concatenate(users)
    frame = pl.DataFrame(
        {
            "user_id": [f"u{u:05d}" for u in user],
            "image_uri": uris[np.concatenate(picks_all)],
            "event": np.where(np.concatenate(saves_all), "save", "click"),
            "ts": pl.Series(np.concatenate(ts_all) + _START_US).cast(pl.Datetime("us")),
        }
    )
    frame = frame.with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    return frame.sort("ts", "user_id", "image_uri", "event").cast(ENGAGEMENT_SCHEMA)
