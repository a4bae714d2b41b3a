"""The model store on a local home and on an object store (fsspec's in-memory filesystem
stands in for a bucket): versions by content, a version complete only with its file list,
fetched once into the local cache, and pointers as an append-only log."""

import json
import uuid

import pytest

import assets.store.models as store_models
from assets.store.files import Home, append_record, write_json
from assets.store.models import (
    PointerMoved,
    current_dir,
    kind_root,
    known_versions,
    pointers,
    save_version,
    set_current,
)


def _weights(payload: str):
    def write(folder):
        (folder / "weights.bin").write_text(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "config.json").write_text(json.dumps({"p": payload}))
    return write


@pytest.fixture(params=["local", "object store"])
def any_home(request, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSLESS_CACHE", str(tmp_path / "cache"))
    if request.param == "local":
        return Home.at(tmp_path / "home")
    return Home.at(f"memory://models-{uuid.uuid4().hex}/home")


def test_versions_pointers_and_loading(any_home, tmp_path):
    a = save_version(any_home, "enc", _weights("a"))
    assert save_version(any_home, "enc", _weights("a")) == a  # same bytes, same version
    b = save_version(any_home, "enc", _weights("b"))
    assert known_versions(any_home, "enc") == sorted([a, b])
    set_current(any_home, "enc", a, "first")
    set_current(any_home, "enc", b, "second")
    state = pointers(any_home, "enc")
    assert state["current"] == b and [h["reason"] for h in state["history"]] == ["first", "second"]
    folder = current_dir(any_home, "enc")
    assert (folder / "weights.bin").read_text() == "b" and json.loads((folder / "sub" / "config.json").read_text()) == {"p": "b"}
    if not any_home.local:
        assert folder.is_relative_to(tmp_path / "cache")  # fetched into the local cache, once
        (folder / "weights.bin").write_text("cached")  # a second load reads the cached copy
        assert current_dir(any_home, "enc") == folder and (folder / "weights.bin").read_text() == "cached"
    with pytest.raises(FileNotFoundError, match="known: "):
        set_current(any_home, "enc", "000000000000")


def test_an_uploaded_version_without_its_file_list_does_not_exist():
    home = Home.at(f"memory://models-{uuid.uuid4().hex}/home")
    (kind_root(home, "enc") / "abc123").mkdir(parents=True, exist_ok=True)
    (kind_root(home, "enc") / "abc123" / "weights.bin").write_text("half an upload")
    assert known_versions(home, "enc") == []
    with pytest.raises(FileNotFoundError, match="no enc version 'abc123'"):
        set_current(home, "enc", "abc123")


def test_pointers_from_before_the_log_are_kept(tmp_path):
    home = Home.at(tmp_path / "home")
    a = save_version(home, "enc", _weights("a"))
    b = save_version(home, "enc", _weights("b"))
    write_json({"current": a, "history": [{"version": a, "at": "2026-01-01", "reason": "old"}]},
               kind_root(home, "enc") / "pointers.json")
    assert pointers(home, "enc")["current"] == a
    set_current(home, "enc", b, "new")
    assert [h["version"] for h in pointers(home, "enc")["history"]] == [a, b]


def test_two_writers_deciding_on_the_same_pointer_never_overwrite_each_other(any_home, monkeypatch):
    """A change decided on a pointer that moved since is refused; of two writes that race
    past that check for the same record number, the first wins and the other writer is told."""
    a, b, c = (save_version(any_home, "enc", _weights(x)) for x in "abc")
    set_current(any_home, "enc", a, "first")
    set_current(any_home, "enc", b, "run 1", expect=a)
    with pytest.raises(PointerMoved, match=f"enc is {b}, not {a}"):
        set_current(any_home, "enc", c, "run 2, decided on a", expect=a)
    assert pointers(any_home, "enc")["current"] == b

    real = store_models.write_json

    def racing(record, path, exclusive=False):  # another writer takes the same number first
        real({"version": a, "at": "", "reason": "the other run", "previous": b}, path, exclusive=True)
        return real(record, path, exclusive=exclusive)

    monkeypatch.setattr(store_models, "write_json", racing)
    with pytest.raises(PointerMoved, match=f"another writer moved enc to {a}"):
        set_current(any_home, "enc", c, "run 3")
    state = pointers(any_home, "enc")
    assert state["current"] == a and [h["reason"] for h in state["history"]] == ["first", "run 1", "the other run"]


def test_an_exclusive_write_never_replaces_a_file(any_home):
    path = any_home.path("x.json")
    write_json({"n": 1}, path, exclusive=True)
    with pytest.raises(FileExistsError):
        write_json({"n": 2}, path, exclusive=True)
    assert json.loads(path.read_text()) == {"n": 1}


def test_records_from_before_the_numbering_come_first_and_count(tmp_path):
    home = Home.at(tmp_path / "home")
    a, b, c = (save_version(home, "enc", _weights(x)) for x in "abc")
    for version in (a, b):  # as set_current wrote them before records were numbered
        append_record(kind_root(home, "enc") / "pointers", {"version": version, "at": "", "reason": "old"})
    assert pointers(home, "enc")["current"] == b
    set_current(home, "enc", c, "new", expect=b)
    assert [h["version"] for h in pointers(home, "enc")["history"]] == [a, b, c]


def test_training_progress_lives_in_the_home_so_another_machine_resumes_it(any_home, tmp_path, monkeypatch):
    import torch

    from assets.store.models import progress_file

    saved = progress_file(any_home, "gutted_reranker", "v1")
    saved.save("run-1", {"model.w": torch.arange(3.0)}, {"step": 7})
    assert any_home.path("training", "gutted_reranker", "progress.safetensors").exists()
    monkeypatch.setenv("LENSLESS_CACHE", str(tmp_path / "another-machine"))  # its own, empty cache
    assert progress_file(any_home, "gutted_reranker", "v2").load("run-1") is None  # other code: afresh
    found = progress_file(any_home, "gutted_reranker", "v1")
    tensors, meta = found.load("run-1")
    assert meta == {"step": 7} and torch.equal(tensors["model.w"], torch.arange(3.0))
    assert found.load("run-2") is None  # another run's progress is not resumed
    found.clear()
    assert not any_home.path("training", "gutted_reranker", "progress.safetensors").exists()
    assert progress_file(any_home, "gutted_reranker", "v1").load("run-1") is None
