"""The demo catalog generator: deterministic bytes, ground truth, JPEG files, engagement schema,
and co-engagement that follows taste across categories. Tiny catalogs, no Dagster."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from assets.demo.catalog import (
    CATALOG_SCHEMA,
    ENGAGEMENT_SCHEMA,
    DemoCatalogConfig,
    generate_engagement,
    write_demo_catalog,
)
from assets.demo.render import CATEGORIES, PALETTES, render_image

CONFIG = DemoCatalogConfig(n_images=40, size=64, seed=3, n_users=500, events_per_user=3, workers=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, pl.DataFrame, list]:
    dest = tmp_path_factory.mktemp("demo")
    calls = []
    catalog = write_demo_catalog(
        dest, CONFIG, progress=lambda done, total: calls.append((done, total))
    )
    return dest, catalog, calls


def _files(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted(dest.rglob("*.jpg"))}


def test_catalog_rows_match_files_and_ground_truth(demo):
    dest, catalog, calls = demo
    assert dict(catalog.schema) == CATALOG_SCHEMA
    assert catalog["index"].to_list() == list(range(CONFIG.n_images))
    assert set(catalog["label"]) == set(CATEGORIES)
    assert pl.read_parquet(dest / "catalog.parquet").equals(catalog)
    assert calls[-1] == (CONFIG.n_images, CONFIG.n_images)
    for row in catalog.iter_rows(named=True):
        path = Path(row["uri"])
        assert path.is_absolute() and path.is_file(), row["uri"]
        assert path.parent.name == row["label"]
        palette = row["style"].split("-")[0]
        assert row["taste"] == PALETTES[palette][0], row
    # taste clusters cut across categories
    per_taste = catalog.group_by("taste").agg(pl.col("label").n_unique())
    assert per_taste["label"].min() >= 2, per_taste


def test_files_are_jpegs_of_the_configured_size(demo):
    dest, catalog, _ = demo
    sizes = set()
    for uri in catalog["uri"]:
        data = Path(uri).read_bytes()
        sizes.add(len(data))
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (CONFIG.size, CONFIG.size))
            pixels = np.asarray(img)
        assert pixels.std() > 5, f"{uri} is nearly blank"
    assert len(sizes) > CONFIG.n_images // 2, "images should differ"


def test_same_config_gives_identical_bytes_in_any_process_order(demo, tmp_path):
    dest, catalog, _ = demo
    # a prefix of the same catalog, rendered by two worker processes into another folder
    small = dataclasses.replace(CONFIG, n_images=12, workers=2)
    other = write_demo_catalog(tmp_path, small)
    theirs, ours = _files(tmp_path), _files(dest)
    assert len(theirs) == 12
    assert all(ours[name] == data for name, data in theirs.items())
    assert other.drop("uri").equals(catalog.head(12).drop("uri"))
    assert generate_engagement(catalog, CONFIG).equals(generate_engagement(catalog, CONFIG))


def test_rerun_skips_good_files_and_repairs_bad_ones(tmp_path):
    config = dataclasses.replace(CONFIG, n_images=10)
    first = write_demo_catalog(tmp_path, config)
    before = _files(tmp_path)
    engagement = pl.read_parquet(tmp_path / "engagement.parquet")
    damaged = Path(first["uri"][3])
    damaged.write_bytes(b"not a jpeg")
    kept = Path(first["uri"][0])
    tables = [kept, *(tmp_path / n for n in ("catalog.parquet", "engagement.parquet", ".demo_manifest.json"))]
    mtimes = [f.stat().st_mtime_ns for f in tables]
    again = write_demo_catalog(tmp_path, config)
    assert again.equals(first)
    assert _files(tmp_path) == before
    # an intact file, the tables and the manifest are not rewritten: a folder ingest of the
    # catalog sees no new file (it compares sizes and mtimes)
    assert [f.stat().st_mtime_ns for f in tables] == mtimes
    assert pl.read_parquet(tmp_path / "engagement.parquet").equals(engagement)
    (tmp_path / ".demo_manifest.json").unlink()  # without digests it re-renders, same bytes
    write_demo_catalog(tmp_path, config)
    assert _files(tmp_path) == before


def test_engagement_schema_and_events(demo):
    dest, catalog, _ = demo
    events = pl.read_parquet(dest / "engagement.parquet")
    assert dict(events.schema) == ENGAGEMENT_SCHEMA
    assert set(events["image_uri"]) <= set(catalog["uri"])
    counts = dict(events["event"].value_counts().iter_rows())
    assert set(counts) == {"click", "save"} and counts["save"] < counts["click"] / 2, counts
    assert events["user_id"].n_unique() == CONFIG.n_users
    span = events["ts"].max() - events["ts"].min()
    assert 50 <= span.days <= 60, span
    assert events["ts"].is_sorted()
    # every save follows a click on the same image by the same user
    clicks = events.filter(pl.col("event") == "click").select("user_id", "image_uri").unique()
    saves = events.filter(pl.col("event") == "save").select("user_id", "image_uri").unique()
    assert saves.join(clicks, on=["user_id", "image_uri"], how="anti").height == 0


def test_co_engagement_follows_taste_across_categories(demo):
    _, catalog, _ = demo
    events = generate_engagement(catalog, CONFIG)
    item = {uri: i for i, uri in enumerate(catalog["uri"])}
    user = {u: i for i, u in enumerate(sorted(set(events["user_id"])))}
    engaged = np.zeros((len(user), len(item)))  # (users, items), 1 where a user engaged
    engaged[[user[u] for u in events["user_id"]], [item[u] for u in events["image_uri"]]] = 1
    co = engaged.T @ engaged  # (items, items): users who engaged with both
    label, taste = catalog["label"].to_numpy(), catalog["taste"].to_numpy()
    cross_category = label[:, None] != label[None, :]
    same_taste = taste[:, None] == taste[None, :]
    within = co[cross_category & same_taste].mean()
    across = co[cross_category & ~same_taste].mean()
    assert within > 1.5 * across, (within, across)  # about 2.3 here; 1.0 would be no signal


def test_engagement_ignores_row_order(demo):
    _, catalog, _ = demo
    shuffled = catalog.sample(fraction=1.0, shuffle=True, seed=1)
    assert generate_engagement(shuffled, CONFIG).equals(generate_engagement(catalog, CONFIG))


def test_every_category_renders_at_the_smallest_size():
    for index in range(len(CATEGORIES)):
        spec, data = render_image(seed=0, index=index, size=32, quality_range=(55, 95))
        assert spec.category == CATEGORIES[index] and 55 <= spec.quality <= 95
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (32, 32)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_images", 0, "n_images must be >= 1, got 0"),
        ("size", 16, "size must be >= 32 px, got 16"),
        ("seed", -1, "seed must be >= 0, got -1"),
        ("n_users", 0, "n_users must be >= 1, got 0"),
        ("events_per_user", 0, "events_per_user must be >= 1, got 0"),
        ("workers", 0, "workers must be >= 1, got 0"),
        ("jpeg_quality_range", (90, 50), r"jpeg_quality_range .*got \(90, 50\)"),
        ("jpeg_quality_range", (0, 50), r"jpeg_quality_range .*got \(0, 50\)"),
    ],
)
def test_bad_config_names_the_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        DemoCatalogConfig(**{field: value})


def test_engagement_rejects_a_catalog_without_taste_or_rows(demo):
    _, catalog, _ = demo
    with pytest.raises(ValueError, match=r"lacks columns \['taste'\]"):
        generate_engagement(catalog.drop("taste"), CONFIG)
    with pytest.raises(ValueError, match="catalog is empty"):
        generate_engagement(catalog.clear(), CONFIG)
