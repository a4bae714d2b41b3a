"""Crash recovery, with real processes killed by SIGKILL: an interrupted ingest is finished by
the next command with nothing lost or duplicated, a run killed in training does not keep
the `train` pool's only slot, and the next run resumes its training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from assets.ingestion.sources import unfinished_batches
from assets.store.files import Home
from assets.store.lake import pixels_path, read_registry, read_table
from assets.store.npy import read_npy

ROOT = Path(__file__).resolve().parents[2]


def write_folder(root: Path, n: int, side: int = 320) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = ("a", "b", "c")[i % 3]
        (root / label).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / label / f"{i:04d}.jpg", quality=90)
    return root


def env_for(home: Path) -> dict:
    return {**os.environ, "LENSLESS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
            "PYTHONPATH": str(ROOT), "LENSLESS_LOG_LEVEL": "WARNING"}


def cli(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", *args], cwd=ROOT, env=env_for(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.05)


def lake_state(home: Path) -> dict:
    """Every ingested image with its pixels' digest, keyed by image_id (batch keys and times aside)."""
    h = Home.at(home)
    manifest = read_table(h, "raw_images")
    out = {}
    for row in manifest.iter_rows(named=True):
        pixels = read_npy(pixels_path(h, row["batch"]))[row["row"]]
        out[row["image_id"]] = (row["uri"], row["sha256"], row["label"], hash(pixels.tobytes()))
    assert len(out) == manifest.height, "an image_id appears twice"
    return out


def test_killed_ingest_is_finished_by_the_next_one(tmp_path):
    src = write_folder(tmp_path / "src", 300)
    reference = tmp_path / "reference"
    done = cli(reference, "ingest", str(src), "--json")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["ingested"] == 300

    home = tmp_path / "interrupted"
    pixels_dir = home / "lake" / "raw_pixels"
    rng = np.random.default_rng(1)
    kills, interrupted, summary = 0, [], None
    # up to three runs killed during decoding and pixel writes, each at a different point; the
    # first run that is not killed (or the fourth) finishes what the kills left
    for attempt in range(4):
        proc = cli(home, "ingest", str(src), "--json")
        if attempt < 3:
            try:
                wait_for(lambda: pixels_dir.is_dir() and any(pixels_dir.glob(".*.tmp")), 120, "decoding to start")
            except TimeoutError:
                proc.kill()
                raise
            time.sleep(float(rng.uniform(0.0, 0.3)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            interrupted = unfinished_batches(Home.at(home))  # what this kill left unfinished
            continue
        assert proc.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        break
    assert kills >= 1, "no run was interrupted"
    assert interrupted, "every kill came after the batch's manifest was written: nothing to resume"
    assert summary["resumed"] == interrupted, f"the interrupted batch was not resumed: {summary}"
    assert lake_state(home) == lake_state(reference)  # nothing lost, nothing duplicated
    assert not list(pixels_dir.glob(".*.tmp")), "temporary files left behind"
    again = cli(home, "ingest", str(src), "--json")  # and nothing is ingested twice later
    out, _ = again.communicate(timeout=300)
    assert json.loads(out.strip().splitlines()[-1])["ingested"] == 0


TRAIN_FOREVER = """
from assets.store.files import Home
from orchestration.pipeline import ingest
from orchestration.runner import materialize_assets
ingest(Home.from_env(), {src!r})
materialize_assets(["image_encoder"], "retrain_job", run_config={{"ops": {{"image_encoder": {{"config":
    {{"architecture": "tiny", "epochs": 100000}}}}}}}})
"""
TRAIN_ONCE = """
from orchestration.runner import materialize_assets
result = materialize_assets(["image_encoder"], "retrain_job", run_config={"ops": {"image_encoder": {"config":
    {"architecture": "tiny", "epochs": 1}}}})
assert result.success
"""


def test_a_run_killed_in_training_does_not_hold_the_train_pool(tmp_path, monkeypatch):
    src = write_folder(tmp_path / "src", 40, side=48)
    home = tmp_path / "home"
    forever = subprocess.Popen([sys.executable, "-c", TRAIN_FOREVER.format(src=str(src))], cwd=ROOT,
                               env=env_for(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # read the same instance from here
    try:
        from dagster import DagsterInstance

        def holds_the_slot() -> bool:
            if forever.poll() is not None:
                raise AssertionError(f"training ended early: {forever.stderr.read()[-2000:]}")
            # open the instance only once the child has created it (its ingest finished): two
            # processes creating one SQLite instance at once break its migrations
            if not any((home / "lake" / "raw_images").glob("*.parquet")):
                return False
            with DagsterInstance.get() as instance:
                return bool(instance.event_log_storage.get_concurrency_info("train").claimed_slots)

        wait_for(holds_the_slot, 240, "the encoder step to take the train slot")
        forever.send_signal(signal.SIGKILL)
        forever.communicate(timeout=60)
        rerun = subprocess.run([sys.executable, "-c", TRAIN_ONCE], cwd=ROOT, env=env_for(home),
                               capture_output=True, text=True, timeout=300)
    finally:
        if forever.poll() is None:
            forever.kill()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "marked failed and freed its pool slots" in rerun.stderr



# the encoder trained as the asset trains it, saving its progress after every step
TRAIN_SAVING_EVERY_STEP = """
import dataclasses, json, sys
import assets.embeddings.assets as encoder_assets
from assets.store.files import Home
from orchestration.pipeline import ingest
from orchestration.runner import materialize_assets

real = encoder_assets.train_encoder
encoder_assets.train_encoder = lambda *args, **kw: real(
    *args[:4], dataclasses.replace(args[4], checkpoint_seconds=0.0), **kw)
if sys.argv[1] == "ingest":
    ingest(Home.from_env(), sys.argv[2])
result = materialize_assets(["image_encoder"], "retrain_job", run_config={"ops": {"image_encoder": {"config":
    {"architecture": "tiny", "epochs": 1}}}})
meta = result.asset_materializations_for_node("image_encoder")[0].metadata
print(json.dumps({"resumed_at_step": meta["resumed_at_step"].value}))
"""


def test_an_encoder_run_killed_in_training_is_resumed_by_the_next(tmp_path):
    """SIGKILL while the encoder trains; the next run goes on from the last saved step
    instead of step 0, and clears the progress once the model is saved."""
    src = write_folder(tmp_path / "src", 40, side=48)
    home = tmp_path / "home"
    saved = home / "training" / "image_encoder" / "progress.safetensors"
    first = subprocess.Popen([sys.executable, "-c", TRAIN_SAVING_EVERY_STEP, "ingest", str(src)], cwd=ROOT,
                             env=env_for(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: saved.exists() or first.poll() is not None, 240, "the encoder to save its progress")
        time.sleep(0.5)  # a few more steps
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL, "training ended before the kill"
    assert saved.exists()
    again = subprocess.run([sys.executable, "-c", TRAIN_SAVING_EVERY_STEP, "train"], cwd=ROOT, env=env_for(home),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["resumed_at_step"] > 0
    assert not saved.exists()


def test_two_concurrent_ingests_lose_and_duplicate_nothing(tmp_path):
    """Two `lensless ingest` of different folders sharing 20 files, started together: the second
    waits for the first; both batches, both sources, every image once, the shared files recorded
    as duplicates."""
    import shutil

    first = write_folder(tmp_path / "first", 60, side=64)
    second = tmp_path / "second"
    for i, path in enumerate(sorted(first.rglob("*.jpg"))[:20]):
        (second / "shared").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, second / "shared" / f"copy{i}.jpg")
    rng = np.random.default_rng(5)
    (second / "own").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(second / "own" / f"{i}.png")
    home = tmp_path / "home"
    procs = [cli(home, "ingest", str(src), "--json") for src in (first, second)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert any("waiting for it to finish" in err for _, err in outputs)
    h = Home.at(home)
    manifest = read_table(h, "raw_images")
    assert manifest.height == 100 and manifest["image_id"].n_unique() == 100 and manifest["sha256"].n_unique() == 100
    assert read_table(h, "duplicates").height == 20
    assert sorted(read_registry(h, "watched_sources")) == sorted([str(first), str(second)])
