"""raw_images and engagement_events under `materialize`, the `lensless_home` resource pointing at
a temporary home."""

import json
import os
import shutil

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from assets.ingestion.assets import engagement_events, quarantine_rate, raw_images, unique_image_ids
from assets.ingestion.sources import list_source, new_entries, register_batch
from assets.store.lake import pixels_path, read_table
from assets.store.npy import read_npy
from assets.store.resource import LenslessHome
from tests.assets.image_files import make_mixed_folder


def _resources(home):
    return {"lensless_home": LenslessHome(path=str(home.root))}


def ingest(home, instance, source, **config):
    entries = new_entries(home, list_source(source))
    batch = register_batch(home, entries)
    instance.add_dynamic_partitions("image_batches", [batch])
    result = dg.materialize([raw_images, quarantine_rate, unique_image_ids], partition_key=batch, instance=instance,
                            resources=_resources(home),
                            run_config={"ops": {"raw_images": {"config": config}}} if config else None)
    assert result.success
    return batch, result


def test_mixed_folder_nothing_lost(home, tmp_path):
    files = make_mixed_folder(tmp_path / "src")
    instance = dg.DagsterInstance.ephemeral()
    batch, result = ingest(home, instance, str(tmp_path / "src"), size=64)
    manifest = read_table(home, "raw_images", [batch])
    quarantine = read_table(home, "quarantine", [batch])
    duplicates = read_table(home, "duplicates", [batch])
    skipped = read_table(home, "skipped", [batch])
    assert sorted(manifest["uri"]) == files["good"]
    assert duplicates["uri"].to_list() == [files["copy"]]
    assert duplicates["duplicate_of"][0] == manifest.filter(pl.col("uri").str.ends_with("formats/photo.jpg"))["image_id"][0]
    assert dict(zip(quarantine["uri"], quarantine["reason"], strict=True)) == files["bad"]
    assert skipped.height == files["skipped"]
    # every file listed is accounted for exactly once
    accounted = manifest.height + quarantine.height + duplicates.height + skipped.height
    assert accounted == len(files["good"]) + 1 + len(files["bad"]) + files["skipped"]
    pixels = read_npy(pixels_path(home, batch))
    assert pixels.shape == (manifest.height, 64, 64, 3)
    assert manifest["label"].to_list().count("formats") == 7
    meta = result.asset_materializations_for_node("raw_images")[0].metadata
    assert meta["ingested"].value == len(files["good"]) and meta["quarantined"].value == len(files["bad"])
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"quarantine_rate": False, "unique_image_ids": True}  # 9 bad of 23: above 20%


def test_dedupe_across_batches_and_idempotent_rerun(home, tmp_path):
    src = tmp_path / "src" / "cats"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / f"{i}.png")
    instance = dg.DagsterInstance.ephemeral()
    first, _ = ingest(home, instance, str(tmp_path / "src"), size=32)
    shutil.copy(src / "0.png", src / "copy_of_0.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / "new.png")
    second, _ = ingest(home, instance, str(tmp_path / "src"), size=32)
    assert read_table(home, "raw_images", [second])["uri"].to_list() == [str(src / "new.png")]
    dup = read_table(home, "duplicates", [second])
    assert dup["uri"].to_list() == [str(src / "copy_of_0.png")]
    assert dup["duplicate_of"][0] in read_table(home, "raw_images", [first])["image_id"].to_list()
    before = read_table(home, "raw_images", [first])
    versions = [_data_version(home, instance, asset, first)
                for asset in (raw_images, raw_images, _with_code_version(raw_images, "a decoder change"))]
    assert read_table(home, "raw_images", [first]).equals(before)  # idempotent, timestamps kept
    assert read_table(home, "raw_images")["image_id"].n_unique() == 4
    # an unchanged batch keeps its data version (its embeddings stay up to date); the same
    # files decoded by changed code get a new one (their embeddings rerun)
    assert versions[0] == versions[1] != versions[2]


def test_a_rerun_killed_after_replacing_the_pixels_leaves_the_batch_unfinished(home, tmp_path, monkeypatch):
    """Re-run of a batch whose first image is gone: killed after the new pixels are written,
    before the manifest. The old manifest must not describe the new pixels."""
    import assets.ingestion.assets as assets_module
    from assets.ingestion.sources import unfinished_batches
    from assets.store.lake import load_pixels

    src = tmp_path / "src"
    src.mkdir()
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        Image.new("RGB", (40, 40), colour).save(src / f"{name}.png")
    instance = dg.DagsterInstance.ephemeral()
    batch, _ = ingest(home, instance, str(src), size=32)
    (src / "a.png").unlink()
    real = assets_module.ingest_batch

    def killed(*args, **kwargs):
        real(*args, **kwargs)  # the pixels file now holds b alone
        raise dg.Failure("killed here", allow_retries=False)  # what a kill leaves on disk

    monkeypatch.setattr(assets_module, "ingest_batch", killed)
    assert not dg.materialize([raw_images], partition_key=batch, instance=instance, resources=_resources(home),
                              run_config={"ops": {"raw_images": {"config": {"size": 32}}}},
                              raise_on_error=False).success
    assert batch in unfinished_batches(home) and read_table(home, "raw_images").height == 0
    monkeypatch.setattr(assets_module, "ingest_batch", real)
    assert dg.materialize([raw_images], partition_key=batch, instance=instance, resources=_resources(home),
                          run_config={"ops": {"raw_images": {"config": {"size": 32}}}}).success
    manifest = read_table(home, "raw_images")
    assert manifest["uri"].to_list() == [str(src / "b.png")]
    assert load_pixels(home, manifest)[0, 0, 0].tolist() == [0, 0, 255]  # b's pixels under b's row


def _with_code_version(asset, code_version):
    return dg.map_asset_specs(lambda spec: spec.replace_attributes(code_version=code_version), [asset])[0]


def _data_version(home, instance, asset, batch):
    result = dg.materialize([asset], partition_key=batch, instance=instance, resources=_resources(home),
                            run_config={"ops": {"raw_images": {"config": {"size": 32}}}})
    (event,) = result.asset_materializations_for_node("raw_images")
    return event.tags["dagster/data_version"]


def _two_sources(home, tmp_path):
    """Sources a and b, each a PNG of its own and a copy of one shared PNG; both batches registered."""
    rng = np.random.default_rng(2)
    pixels = {name: rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for name in ("shared", "a", "b")}
    batches = {}
    for source, names in (("a", ("shared", "a")), ("b", ("shared", "b"))):
        (tmp_path / source).mkdir()
        for name in names:
            Image.fromarray(pixels[name]).save(tmp_path / source / f"{name}.png")
        batches[source] = register_batch(home, new_entries(home, list_source(str(tmp_path / source))))
    return batches


def _stall_after_decoding(monkeypatch, batch):
    """Make `batch`'s first decode wait, once done, until the returned `go` is set; `decoded`
    is set when it waits."""
    import threading

    import assets.ingestion.assets as assets_module

    decoded, go = threading.Event(), threading.Event()
    real_ingest_batch = assets_module.ingest_batch

    def ingest_batch(key, *args, **kwargs):
        result = real_ingest_batch(key, *args, **kwargs)
        if key == batch and not decoded.is_set():
            decoded.set()
            assert go.wait(timeout=60)
        return result

    monkeypatch.setattr(assets_module, "ingest_batch", ingest_batch)
    return decoded, go


def _materialize(home, batch, **config):
    with dg.DagsterInstance.ephemeral() as instance:  # disposed in the thread that made it (SQLite)
        instance.add_dynamic_partitions("image_batches", [batch])
        return dg.materialize([raw_images, unique_image_ids], partition_key=batch, instance=instance,
                              resources=_resources(home), raise_on_error=False,
                              run_config={"ops": {"raw_images": {"config": {"size": 32, **config}}}})


def test_two_batches_ingested_at_once_ingest_an_image_they_share_once(home, tmp_path, monkeypatch):
    """Batch a decodes, then stalls; batch b, holding a copy of one of a's files, is ingested
    meanwhile. When a writes, the image is already b's, so a records a duplicate of it."""
    import threading

    batches = _two_sources(home, tmp_path)
    decoded, go = _stall_after_decoding(monkeypatch, batches["a"])
    results = {}
    first = threading.Thread(target=lambda: results.update(a=_materialize(home, batches["a"])))
    first.start()
    assert decoded.wait(timeout=60)
    results["b"] = _materialize(home, batches["b"])
    go.set()
    first.join(timeout=60)
    assert results["a"].success and results["b"].success
    manifest = read_table(home, "raw_images")
    assert manifest["sha256"].n_unique() == manifest.height == 3
    shared_id = read_table(home, "raw_images", [batches["b"]]).filter(
        pl.col("uri").str.ends_with("shared.png"))["image_id"].item()
    duplicates = read_table(home, "duplicates", [batches["a"]])
    assert duplicates["uri"].to_list() == [str(tmp_path / "a" / "shared.png")]
    assert duplicates["duplicate_of"].to_list() == [shared_id]
    assert read_npy(pixels_path(home, batches["a"])).shape[0] == 1
    assert all(c.passed for c in results["a"].get_asset_check_evaluations())


def test_a_duplicate_of_an_image_a_rerun_let_go_is_ingested_after_all(home, tmp_path, monkeypatch):
    """b decodes its copy of the shared image as a duplicate of a's, then stalls; a is re-run
    meanwhile with a policy that quarantines it. When b writes, the image it repeats is gone,
    so b ingests it: the image stays in the lake."""
    import threading

    batches = _two_sources(home, tmp_path)
    assert _materialize(home, batches["a"]).success
    decoded, go = _stall_after_decoding(monkeypatch, batches["b"])
    results = {}
    second = threading.Thread(target=lambda: results.update(b=_materialize(home, batches["b"])))
    second.start()
    assert decoded.wait(timeout=60)
    assert _materialize(home, batches["a"], min_side=41).success  # a's 40 px images: too small now
    go.set()
    second.join(timeout=60)
    assert results["b"].success
    assert read_table(home, "raw_images", [batches["a"]]).height == 0
    assert sorted(read_table(home, "raw_images", [batches["b"]])["uri"]) == [
        str(tmp_path / "b" / "b.png"), str(tmp_path / "b" / "shared.png")]
    assert read_table(home, "duplicates", [batches["b"]]).height == 0


def test_an_image_a_rerun_lets_go_comes_back_from_a_batch_that_repeats_it(home, tmp_path):
    """a ingested the shared image and b recorded its copy as a duplicate of it; then a's file
    is deleted and a is re-run. b is orphaned until it is ingested again, and then holds the
    image: it stays in the lake under the same id."""
    from assets.ingestion.sources import orphaned_batches

    batches = _two_sources(home, tmp_path)
    assert _materialize(home, batches["a"]).success and _materialize(home, batches["b"]).success
    shared = read_table(home, "duplicates", [batches["b"]])["duplicate_of"].to_list()
    assert len(shared) == 1 and orphaned_batches(home) == []
    (tmp_path / "a" / "shared.png").unlink()
    assert _materialize(home, batches["a"]).success
    assert shared[0] not in read_table(home, "raw_images")["image_id"].to_list()
    assert orphaned_batches(home) == [batches["b"]]
    assert _materialize(home, batches["b"]).success  # what resume_unfinished and the sensor request
    assert orphaned_batches(home) == []
    kept = read_table(home, "raw_images", [batches["b"]])
    assert shared[0] in kept["image_id"].to_list() and str(tmp_path / "b" / "shared.png") in kept["uri"].to_list()


def test_a_file_that_could_not_be_read_is_retried_once_readable(home, tmp_path, monkeypatch):
    import assets.ingestion.batch as batch_module
    import assets.ingestion.sources as sources_module

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / f"{i}.png")
    locked = str(src / "1.png")
    real_read = batch_module.read_bytes

    def read(uri):
        if uri == locked:
            raise PermissionError(13, "Permission denied", uri)
        return real_read(uri)

    instance = dg.DagsterInstance.ephemeral()
    with monkeypatch.context() as m:
        m.setattr(batch_module, "read_bytes", read)
        first, _ = ingest(home, instance, str(src), size=32)
    quarantined = read_table(home, "quarantine", [first])
    assert quarantined["uri"].to_list() == [locked] and "could not read" in quarantined["detail"][0]
    with monkeypatch.context() as m:  # still unreadable for this process: not listed again
        m.setattr(sources_module.os, "access", lambda path, mode: False)
        assert new_entries(home, list_source(str(src))).height == 0
    second, _ = ingest(home, instance, str(src), size=32)  # readable now (a chmod keeps size and mtime)
    assert read_table(home, "raw_images", [second])["uri"].to_list() == [locked]
    assert new_entries(home, list_source(str(src))).height == 0  # ingested: never again
    assert read_table(home, "raw_images")["uri"].n_unique() == 3


def test_a_remote_file_that_never_reads_is_retried_a_few_times_not_forever(home, monkeypatch):
    """An object the credentials may list but not get (S3 AccessDenied) is tried in
    READ_ATTEMPTS batches, then only again once its size or mtime changes."""
    import io
    import uuid

    import fsspec

    import assets.ingestion.batch as batch_module
    from assets.ingestion.sources import READ_ATTEMPTS

    bucket = f"memory://denied-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for name in ("good.png", "denied.png"):
        out = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), len(name), np.uint8)).save(out, "PNG")
        fs.pipe(f"{bucket}/{name}", out.getvalue())
    real_read = batch_module.read_bytes
    monkeypatch.setattr(batch_module, "read_bytes", lambda uri: (_ for _ in ()).throw(
        PermissionError(f"Access Denied: {uri}")) if uri.endswith("denied.png") else real_read(uri))
    instance = dg.DagsterInstance.ephemeral()
    tried = 0
    for _ in range(READ_ATTEMPTS + 2):
        if new_entries(home, list_source(bucket)).height == 0:
            break
        batch, _ = ingest(home, instance, bucket, size=32)
        tried += read_table(home, "quarantine", [batch]).height
    assert tried == READ_ATTEMPTS
    assert [u.rsplit("/", 1)[1] for u in read_table(home, "raw_images")["uri"]] == ["good.png"]


def test_a_frozen_batch_is_never_overwritten(home, tmp_path, monkeypatch):
    import assets.ingestion.sources as sources_module

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "a.png")
    entries = new_entries(home, list_source(str(src)))
    monkeypatch.setattr(sources_module, "new_batch_key", lambda e: "b20260101T000000-0a1b2c3d")  # one second
    first, second = register_batch(home, entries), register_batch(home, entries)
    assert second == f"{first}-2" and sorted([second, first]) == [first, second]
    with pytest.raises(ValueError, match="exists and its file list is frozen"):
        register_batch(home, entries, key=first)


def test_engagement_events_counts_unknown_images(home, tmp_path):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(src / f"{i}.png")
    instance = dg.DagsterInstance.ephemeral()
    ingest(home, instance, str(tmp_path / "src"))
    events = pl.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"],
        "image_uri": [str(src / "0.png"), str(src / "1.png"), str(src / "1.png"), "/nowhere.png"],
        "event": ["save", "click", "CLICK", "save"],
        "ts": ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z"],
    })
    path = tmp_path / "events.csv"
    events.write_csv(path)
    overlapping = tmp_path / "events-again.csv"  # an export that overlaps: its first two rows again
    events.head(2).vstack(events.head(2)).write_csv(overlapping)
    result = dg.materialize([engagement_events], instance=instance, resources=_resources(home),
                            run_config={"ops": {"engagement_events": {"config": {"paths": [str(path), str(overlapping)]}}}})
    meta = result.asset_materializations_for_node("engagement_events")[0].metadata
    assert meta["events"].value == 3 and meta["dropped_unknown_image"].value == 1
    assert "| duplicate_event | 4 |" in meta["dropped"].value  # each listed event counts once
    table = read_table(home, "engagement_events")
    assert set(table["event"]) == {"save", "click"} and table["image_id"].null_count() == 0


def test_bad_engagement_file_names_missing_columns(home, tmp_path):
    from assets.ingestion.engagement import load_engagement_file

    path = tmp_path / "bad.csv"
    pl.DataFrame({"user": ["u"], "event": ["save"]}).write_csv(path)
    with pytest.raises(ValueError, match="lacks columns"):
        load_engagement_file(str(path))


def test_real_data_sklearn_digits_and_photos(home, tmp_path):
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    root = tmp_path / "real"
    for i in range(60):
        d = root / f"digit_{digits.target[i]}"
        d.mkdir(parents=True, exist_ok=True)
        img = (digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(img).resize((64, 64), Image.Resampling.NEAREST).save(d / f"{i}.png")
    (root / "photos").mkdir()
    for name, arr in zip(load_sample_images().filenames, load_sample_images().images, strict=True):
        Image.fromarray(arr).save(root / "photos" / (name.split("/")[-1]), quality=90)
    instance = dg.DagsterInstance.ephemeral()
    batch, _ = ingest(home, instance, str(root), size=64)
    manifest = read_table(home, "raw_images", [batch])
    dups = read_table(home, "duplicates", [batch]).height
    assert manifest.height + dups == 62 and read_table(home, "quarantine", [batch]).height == 0
    assert manifest.filter(pl.col("label") == "photos").height == 2
    assert set(manifest["label"]) >= {f"digit_{k}" for k in range(10)}


def test_cli_ingest_json(lensless_home, tmp_path, capsys):
    from orchestration.cli import main

    make_mixed_folder(tmp_path / "src")
    assert main(["ingest", str(tmp_path / "src"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ingested"] == 13 and summary["duplicates"] == 1 and summary["skipped"] == 2
    assert summary["quarantined"] == {"empty": 1, "not_an_image": 4, "too_many_pixels": 1, "too_small": 1,
                                      "truncated": 1, "undecodable": 1}
    assert main(["ingest", str(tmp_path / "src"), "--json"]) == 0  # nothing new the second time
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["batch"] is None
    assert main(["ingest", str(tmp_path / "missing")]) == 2


def test_fsspec_memory_source(home):
    import fsspec

    from tests.assets.image_files import encode, good_files

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/imgs/mugs/one.png", good_files()["formats/photo.png"])
    fs.pipe("/bucket/imgs/mugs/two.webp", good_files()["formats/photo.webp"])
    fs.pipe("/bucket/imgs/notes.md", b"# skipped")
    fs.pipe("/bucket/imgs/lamps/three.jpg", encode(Image.new("RGB", (50, 50), (1, 2, 3)), "JPEG"))
    instance = dg.DagsterInstance.ephemeral()
    batch, _ = ingest(home, instance, "memory://bucket/imgs", size=32)
    manifest = read_table(home, "raw_images", [batch])
    assert sorted(manifest["label"]) == ["lamps", "mugs", "mugs"]
    assert all(u.startswith("memory://") for u in manifest["uri"])
    assert read_table(home, "skipped", [batch])["reason"].to_list() == ["unsupported_extension:.md"]


def test_bad_entries_in_a_source_are_skipped_with_their_reason_not_fatal(home, tmp_path):
    """A dangling link, a link loop, a link out of the source, a linked folder, a FIFO and an
    unreadable folder are skipped rows; the readable images are still ingested."""
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 80 * i, np.uint8)).save(src / "ok" / f"{i}.png")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(outside)
    os.symlink(src / "ok" / "missing.png", src / "ok" / "dangling.png")
    os.symlink(src / "ok" / "loop.png", src / "ok" / "loop.png")
    os.symlink(outside, src / "ok" / "escape.png")
    os.symlink(src / "ok", src / "linked")
    os.mkfifo(src / "ok" / "pipe.png")  # reading a FIFO would block the ingest for ever
    locked = src / "locked"
    locked.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(locked / "x.png")
    locked.chmod(0)
    try:
        listing = list_source(str(src))
    finally:
        locked.chmod(0o755)
    reasons = {os.path.basename(u): r for u, r in zip(listing.skipped["uri"], listing.skipped["skipped_reason"],
                                                      strict=True)}
    readable = ["0.png", "1.png"] + (["x.png"] if os.geteuid() == 0 else [])  # root reads any folder
    assert sorted(os.path.basename(u) for u in listing.files["uri"]) == readable
    assert reasons["dangling.png"].startswith("unreadable_file:") and reasons["loop.png"].startswith("unreadable_file:")
    assert reasons["escape.png"] == "link_outside_source" and reasons["linked"] == "linked_folder_not_followed"
    assert reasons["pipe.png"] == "not_a_regular_file"
    if os.geteuid() != 0:
        assert reasons["locked"].startswith("unreadable_folder:")


def test_hidden_folders_and_names_that_are_not_utf8_are_skipped_with_their_reason(tmp_path):
    src = tmp_path / "src"
    for folder in ("ok", ".thumbnails/normal", "ok2"):
        (src / folder).mkdir(parents=True, exist_ok=True)
    for path in ("ok/a.png", ".thumbnails/normal/a.png", "ok2/b.png"):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / path)
    latin1 = os.path.join(os.fsencode(src / "ok"), b"caf\xe9.png")  # a name unzip may leave
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(latin1, format="PNG")
    listing = list_source(str(src))
    assert sorted(os.path.relpath(u, src) for u in listing.files["uri"]) == ["ok/a.png", "ok2/b.png"]
    reasons = dict(zip(listing.skipped["uri"], listing.skipped["skipped_reason"], strict=True))
    assert reasons == {str(src / ".thumbnails/normal/a.png"): "hidden_file",
                       str(src / "ok") + "/caf\\xe9.png": "undecodable_name"}


def test_an_empty_source_is_refused_and_not_watched(lensless_home, tmp_path, capsys):
    from assets.ingestion.engagement import registered_sources
    from assets.ingestion.sources import watched_sources
    from orchestration.cli import main

    (tmp_path / "empty").mkdir()
    events = tmp_path / "events.csv"
    events.write_text("user_id,image_id,event,ts\nu,x,click,2026-01-01\n")
    assert main(["ingest", str(tmp_path / "empty"), "--engagement", str(events)]) == 2
    assert "holds no files" in capsys.readouterr().err and watched_sources(lensless_home) == []
    assert registered_sources(lensless_home) == []  # nor is the engagement file given with it
    for nothing in ("", "  ", "file://", "memory:///"):  # not the working directory
        assert main(["ingest", nothing]) == 2
        assert "names no folder" in (err := capsys.readouterr().err) or "source is empty" in err
    assert watched_sources(lensless_home) == []
