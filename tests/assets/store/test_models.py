"""The model store on a local home and on an object store (fsspec's in-memory filesystem
stands in for a bucket): versions by content, a version complete only with its file list,
fetched once into the local cache, and pointers as an append-only log."""

import json
import uuid

import pytest

from assets.store.files import Home, write_json
from assets.store.models import (
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
        (folder / "weights.bin").write_text("b")  # a second load reads the cached copy
        assert current_dir(any_home, "enc") == folder
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
