"""update_index on a temporary home: full build, incremental add, drift rebuild, encoder change."""

import numpy as np
import polars as pl
import pytest

from assets.retrieval.index_store import IndexConfig, load_index, load_state, update_index

D = 16


def partition(prefix: str, n: int, center: np.ndarray, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = center + 0.3 * rng.normal(size=(n, D))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return pl.DataFrame({"image_id": [f"{prefix}{i}" for i in range(n)],
                         "embedding": pl.Series(x, dtype=pl.Array(pl.Float32, D))})


def quiet(*_):
    pass


E = np.eye(D)
CFG = IndexConfig(tuning_queries=200)


def test_build_then_incremental_add_then_unchanged(home):
    parts = {"b1": partition("a", 600, E[0], 0)}
    first = update_index(home, parts, "enc1", CFG, log=quiet)
    assert first["mode"] == "rebuild" and first["reason"] == "no index yet" and first["n"] == 600
    parts["b2"] = partition("b", 50, E[0], 1)
    second = update_index(home, parts, "enc1", CFG, log=quiet)
    assert second["mode"] == "incremental" and second["n"] == 650 and second["partitions"] == ["b1", "b2"]
    index, ids, state = load_index(home, mmap=False)
    assert index.ntotal == 650 and ids.tolist() == [f"a{i}" for i in range(600)] + [f"b{i}" for i in range(50)]
    # a stored vector finds itself: row ids map back to image ids
    _, found = index.search(parts["b2"]["embedding"].to_numpy()[:5], 1)
    assert [ids[r] for r in found[:, 0]] == [f"b{i}" for i in range(5)]
    assert update_index(home, parts, "enc1", CFG, log=quiet)["mode"] == "unchanged"


def test_the_stored_recall_is_the_tuners_and_meets_the_target(home):
    state = update_index(home, {"b1": partition("a", 800, E[0], 0)}, "enc1", CFG, log=quiet)
    on_disk = load_state(home)
    assert on_disk["recall_at_10"] == state["recall_at_10"] >= on_disk["target_recall"]
    assert on_disk["met_target"] is True


def test_new_encoder_rebuilds_everything(home):
    parts = {"b1": partition("a", 300, E[0], 0)}
    update_index(home, parts, "enc1", CFG, log=quiet)
    again = update_index(home, parts, "enc2", CFG, log=quiet)
    assert again["mode"] == "rebuild" and "encoder changed enc1 → enc2" in again["reason"]
    assert load_state(home)["encoder_version"] == "enc2"


def test_quantizer_drift_rebuilds_an_ivf_index(home):
    budget = IndexConfig(tuning_queries=200, memory_budget_bytes=300_000)  # IVF, not Flat or HNSW
    parts = {"b1": partition("a", 3000, E[0], 0)}
    first = update_index(home, parts, "enc1", budget, log=quiet)
    assert first["factory"].startswith("IVF")
    parts["b2"] = partition("c", 40, E[1] - E[0], 2)  # far from every trained centroid
    drifted = update_index(home, parts, "enc1", budget, log=quiet)
    assert drifted["mode"] == "rebuild" and drifted["reason"].startswith("quantizer drift")
    assert drifted["drift"] > 1.5 and drifted["n"] == 3040


def test_a_vanished_partition_rebuilds(home):
    parts = {"b1": partition("a", 200, E[0], 0), "b2": partition("b", 200, E[2], 1)}
    update_index(home, parts, "enc1", CFG, log=quiet)
    del parts["b2"]
    again = update_index(home, parts, "enc1", CFG, log=quiet)
    assert again["mode"] == "rebuild" and again["reason"] == "partitions disappeared" and again["n"] == 200


@pytest.mark.parametrize("change", ["grew", "lost an image", "lost an image, and a new batch came", "decoded anew"])
def test_a_reingested_partition_rebuilds(home, change):
    parts = {"b1": partition("a", 300, E[0], 0)}
    update_index(home, parts, "enc1", CFG, log=quiet)
    b1 = partition("a", 301, E[0], 0)  # the same images, and a301
    parts["b1"] = b1 if change == "grew" else b1.filter(pl.col("image_id") != "a5")
    if change == "decoded anew":  # the same images, other pixels (a new raw_images code version): other vectors
        parts["b1"] = partition("a", 300, E[1], 0)
    if change.endswith("new batch came"):
        parts["b2"] = partition("b", 60, E[0], 1)
    again = update_index(home, parts, "enc1", CFG, log=quiet)
    assert again["mode"] == "rebuild" and again["reason"] == "partitions changed: b1"
    _, ids, state = load_index(home, mmap=False)
    assert sorted(ids.tolist()) == sorted(pl.concat([p["image_id"] for p in parts.values()]).to_list())
    assert ("a5" in ids.tolist()) == (change in ("grew", "decoded anew")) and state["n"] == len(ids)
    assert update_index(home, parts, "enc1", CFG, log=quiet)["mode"] == "unchanged"


def test_no_partitions_is_an_error(home):
    with pytest.raises(AssertionError, match="no embedding partitions"):
        update_index(home, {}, "enc1", CFG, log=quiet)


def test_readers_see_one_whole_generation_and_a_damaged_index_is_refused_then_rebuilt(home):
    """A crash before the pointer switch leaves the previous generation current; a damaged
    index file is refused (sha256), naming what to do, and the next update rebuilds it."""
    from assets.retrieval.index_store import KEEP_GENERATIONS, current_generation, index_dir

    parts = {"b1": partition("a", 300, E[0], 0)}
    update_index(home, parts, "enc1", CFG, log=quiet)
    first = current_generation(home)
    # a later update that died before its switch: a half-written folder nobody reads
    half = index_dir(home) / (first.name.split("-")[0] + "-ffffff")  # between this update and the next
    half.mkdir()
    (half / "faiss.index").write_bytes(b"partial")
    index, ids, state = load_index(home)
    assert current_generation(home) == first and index.ntotal == len(ids) == 300

    parts["b2"] = partition("b", 20, E[0], 1)
    second = update_index(home, parts, "enc1", CFG, log=quiet)
    assert second["mode"] == "incremental" and current_generation(home).name == second["generation"]
    assert load_index(home)[0].ntotal == 320 and first.exists()  # the old one stays for readers

    path = current_generation(home) / "faiss.index"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.*rematerialise faiss_index"):
        load_index(home)
    parts["b3"] = partition("c", 10, E[0], 2)
    again = update_index(home, parts, "enc1", CFG, log=quiet)
    assert again["mode"] == "rebuild" and "cannot be read" in again["reason"]
    assert load_index(home)[0].ntotal == 330
    for i in range(KEEP_GENERATIONS):
        parts[f"x{i}"] = partition(f"x{i}-", 5, E[0], 10 + i)
        update_index(home, parts, "enc1", CFG, log=quiet)
    kept = [p for p in index_dir(home).iterdir() if p.is_dir()]
    assert len(kept) == KEEP_GENERATIONS and not first.exists()


def test_a_pointer_to_a_missing_generation_is_named_then_rebuilt(home):
    from assets.retrieval.index_store import index_dir

    parts = {"b1": partition("a", 600, E[0], 0)}
    update_index(home, parts, "enc1", CFG, log=quiet)
    (index_dir(home) / "current.json").write_text('{"generation": "gone"}')
    with pytest.raises(FileNotFoundError, match="names index generation gone.*rematerialise faiss_index"):
        load_index(home)
    assert update_index(home, parts, "enc1", CFG, log=quiet)["mode"] == "rebuild"  # what the message says works
    index, ids, state = load_index(home)
    assert index.ntotal == len(ids) == state["n"] == 600


def test_an_index_on_an_object_store_is_written_and_read_as_bytes():
    """fsspec's in-memory filesystem stands in for a bucket: build, incremental add and load
    go through faiss's serialised bytes, one object each."""
    import uuid

    from assets.retrieval.index_store import index_dir
    from assets.store.files import Home

    home = Home.at(f"memory://index-{uuid.uuid4().hex}/home")
    parts = {"b1": partition("a", 600, E[0], 0)}
    first = update_index(home, parts, "enc1", CFG, log=quiet)
    assert first["bytes_per_vector"] > D * 4 * 0.9  # the stored object's size, per vector
    parts["b2"] = partition("b", 50, E[0], 1)
    assert update_index(home, parts, "enc1", CFG, log=quiet)["mode"] == "incremental"
    index, ids, state = load_index(home)
    assert index.ntotal == len(ids) == state["n"] == 650
    names = {p.name for p in index_dir(home).iterdir()}
    assert "current.json" in names and state["generation"] in names and len(names) == 3  # + the first
    assert {p.name for p in (index_dir(home) / state["generation"]).iterdir()} == {
        "faiss.index", "ids.parquet", "state.json"}
    _, found = index.search(parts["b2"]["embedding"].to_numpy()[:3], 1)
    assert [ids[r] for r in found[:, 0]] == ["b0", "b1", "b2"]


def test_the_stored_recall_holds_for_queries_the_index_has_never_seen(home):
    """Tuned on vectors kept out of the build, the stored recall is what a new image gets;
    queries made from stored vectors would overstate a graph's (efSearch too low)."""
    from index.metrics import exact_knn, recall_at_k
    from index.search import search

    parts = {f"b{c}": partition(f"c{c}-", 6000, E[c], c) for c in range(4)}  # 24k: past Flat
    state = update_index(home, parts, "enc1", IndexConfig(), log=quiet)
    assert state["factory"] != "Flat" and state["met_target"], state["factory"]
    index, _, _ = load_index(home, mmap=False)
    fresh = np.concatenate([partition("q", 250, E[c], 100 + c)["embedding"].to_numpy() for c in range(4)])
    xb = np.concatenate([p["embedding"].to_numpy() for p in parts.values()])
    _, gt = exact_knn(xb, fresh, 10)
    recall = recall_at_k(search(index, fresh, 10)[1], gt, 10)
    assert recall >= state["recall_at_10"] - 0.03 and recall >= 0.92, (state["factory"], state["params"], recall)
