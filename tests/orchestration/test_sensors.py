"""new_images_sensor with build_sensor_context: only new files, cursor advances, batches of ≤ B."""

import json

import dagster as dg
import numpy as np
from PIL import Image

from assets.ingestion.assets import raw_images
from assets.ingestion.sources import read_batch
from assets.store.resource import LenslessHome
from orchestration.sensors import new_images_sensor


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((40, 40, 3), 10 * i, np.uint8)).save(folder / name)


def tick(home, instance, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"lensless_home": LenslessHome(path=str(home.root))}) as context:
        result = new_images_sensor(context)
    if isinstance(result, dg.SensorResult):
        for req in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_sensor_only_new_files_and_cursor_advances(home, tmp_path, monkeypatch):
    src = tmp_path / "watched"
    write_images(src / "shoes", ["a.png", "b.png", "c.png"])
    (src / "readme.txt").write_text("skipped and counted")
    monkeypatch.setenv("LENSLESS_WATCH", str(src))
    instance = dg.DagsterInstance.ephemeral()

    first = tick(home, instance)
    assert len(first.run_requests) == 1
    batch = first.run_requests[0].partition_key
    assert first.run_requests[0].tags["lensless/reason"] == "new_images"
    files = read_batch(home, batch)
    assert files.height == 4 and files["skipped_reason"].null_count() == 3
    cursor1 = json.loads(first.cursor)
    assert cursor1["last_batch"] == batch and cursor1["listed"] == 4

    second = tick(home, instance, first.cursor)
    assert not second.run_requests and second.skip_reason is not None

    write_images(src / "bags", ["d.png", "e.png"])
    third = tick(home, instance, second.cursor)
    assert len(third.run_requests) == 1
    new_files = read_batch(home, third.run_requests[0].partition_key)
    assert sorted(u.split("/")[-1] for u in new_files["uri"]) == ["d.png", "e.png"]
    assert json.loads(third.cursor)["last_batch"] != cursor1["last_batch"]
    assert set(instance.get_dynamic_partitions("image_batches")) == {batch, third.run_requests[0].partition_key}


def test_sensor_cuts_batches_of_at_most_b(home, tmp_path, monkeypatch):
    src = tmp_path / "watched"
    write_images(src, [f"{i}.png" for i in range(5)])
    monkeypatch.setenv("LENSLESS_WATCH", str(src))
    monkeypatch.setenv("LENSLESS_SENSOR_BATCH_SIZE", "2")
    result = tick(home, dg.DagsterInstance.ephemeral())
    sizes = [read_batch(home, r.partition_key).height for r in result.run_requests]
    assert sizes == [2, 2, 1]


def test_sensor_recovers_stranded_batch(home, tmp_path, monkeypatch):
    """A batch frozen on disk whose partition was never added (crash mid-tick) is added next tick."""
    from assets.ingestion.sources import list_source, new_entries, register_batch

    src = tmp_path / "watched"
    write_images(src, ["x.png"])
    monkeypatch.setenv("LENSLESS_WATCH", str(src))
    stranded = register_batch(home, new_entries(home, list_source(str(src))))
    result = tick(home, dg.DagsterInstance.ephemeral())
    assert [r.partition_key for r in result.run_requests] == [stranded]


def test_sensor_skips_without_sources(home, monkeypatch):
    monkeypatch.delenv("LENSLESS_WATCH", raising=False)
    result = tick(home, dg.DagsterInstance.ephemeral())
    assert isinstance(result, dg.SkipReason) and "LENSLESS_WATCH" in result.skip_message


def test_sensor_requests_an_interrupted_batch_again(home, tmp_path, monkeypatch):
    """A batch whose run ended without writing its manifest (failed, or its process died) is
    requested again, once per ended run; a batch whose run is still going is left alone."""
    src = tmp_path / "watched"
    write_images(src, ["x.png", "y.png"])
    monkeypatch.setenv("LENSLESS_WATCH", str(src))
    instance = dg.DagsterInstance.ephemeral()
    batch = tick(home, instance).run_requests[0].partition_key

    def add_run(status):
        run = dg.DagsterRun(job_name="ingest_job", run_id=f"run-{status.value.lower()}", status=status,
                            tags={"dagster/partition": batch})
        instance.add_run(run)
        return run.run_id

    add_run(dg.DagsterRunStatus.STARTED)
    assert not tick(home, instance).run_requests  # still running: not interrupted
    failed = add_run(dg.DagsterRunStatus.FAILURE)
    retry = tick(home, instance).run_requests
    assert [(r.partition_key, r.run_key, r.tags["lensless/reason"]) for r in retry] == [
        (batch, f"{batch}:after:{failed}", "interrupted_batch")]


def test_sensor_skips_a_tick_while_a_command_writes_the_home(home, tmp_path, monkeypatch):
    """A `lensless` command holding the home (in another process) may be cutting batches of
    the same files: the tick cuts none, says who writes, and the next tick does the work."""
    import subprocess
    import sys

    src = tmp_path / "watched"
    write_images(src, ["a.png", "b.png"])
    monkeypatch.setenv("LENSLESS_WATCH", str(src))
    instance = dg.DagsterInstance.ephemeral()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, '.');"
        "from assets.store.files import Home; from assets.store.lock import writer_lock;"
        f"cm = writer_lock(Home.at({str(home.root)!r}), 'ingest'); cm.__enter__(); print('held', flush=True);"
        "sys.stdin.readline()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = tick(home, instance)
        assert isinstance(busy, dg.SkipReason) and "`lensless ingest`" in busy.skip_message
        assert not instance.get_dynamic_partitions("image_batches")
    finally:
        holder.communicate("\n", timeout=10)
    assert len(tick(home, instance).run_requests) == 1


def test_a_registered_source_is_watched_as_ingested_and_a_bad_one_blocks_no_other(home, tmp_path, monkeypatch):
    """`lensless ingest src --label-depth 2` from another working directory: the sensor finds
    the same folder and labels new files by the same level; a registered source that is gone
    is skipped with a warning while the others are listed."""
    from assets.ingestion.sources import register_watched
    from assets.store.lake import add_to_registry

    monkeypatch.delenv("LENSLESS_WATCH", raising=False)
    write_images(tmp_path / "src" / "shop" / "shoes", ["a.png"])
    monkeypatch.chdir(tmp_path)
    register_watched(home, "src", label_depth=2)  # relative, as typed
    add_to_registry(home, "watched_sources", str(tmp_path / "gone"))  # removed since
    monkeypatch.chdir("/")
    result = tick(home, dg.DagsterInstance.ephemeral())
    (request,) = result.run_requests
    files = read_batch(home, request.partition_key)
    assert files["uri"].to_list() == [str(tmp_path / "src" / "shop" / "shoes" / "a.png")]
    assert files["label"].to_list() == ["shoes"]  # depth 2, not the default 1 ("shop")


def test_sensor_ingests_again_a_batch_whose_duplicates_lost_their_image(home, tmp_path, monkeypatch):
    """a holds an image, b a copy of it; a is re-run after its file was deleted: the next tick
    requests b again (once), so b ingests its copy."""
    write_images(tmp_path / "a", ["shared.png"])
    monkeypatch.setenv("LENSLESS_WATCH", str(tmp_path / "a"))
    instance = dg.DagsterInstance.ephemeral()
    resources = {"lensless_home": LenslessHome(path=str(home.root))}
    (first,) = tick(home, instance).run_requests
    assert dg.materialize([raw_images], partition_key=first.partition_key, instance=instance, resources=resources).success
    write_images(tmp_path / "b", ["shared.png"])
    monkeypatch.setenv("LENSLESS_WATCH", f"{tmp_path / 'a'},{tmp_path / 'b'}")
    (second,) = tick(home, instance).run_requests
    assert dg.materialize([raw_images], partition_key=second.partition_key, instance=instance, resources=resources).success
    (tmp_path / "a" / "shared.png").unlink()
    assert dg.materialize([raw_images], partition_key=first.partition_key, instance=instance, resources=resources).success
    third = tick(home, instance)
    assert [r.partition_key for r in third.run_requests] == [second.partition_key]
    assert third.run_requests[0].run_key.startswith(f"{second.partition_key}:after:")
