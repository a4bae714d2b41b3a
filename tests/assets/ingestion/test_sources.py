"""Listing a source: folder names that fsspec would read as URL syntax."""

import numpy as np
from PIL import Image

from assets.ingestion.sources import list_source


def test_a_local_folder_with_a_double_colon_in_its_name_is_listed_as_named(tmp_path):
    """fsspec reads "a::b" as a chain of URLs ending at "a"; a local folder is walked as it is."""
    named = tmp_path / "a::b" / "cats"
    decoy = tmp_path / "a" / "other"
    for folder in (named, decoy):
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "x.png")
    listing = list_source(str(tmp_path / "a::b"))
    assert listing.files["uri"].to_list() == [str(named / "x.png")]
    assert listing.files["label"].to_list() == ["cats"]


def test_a_url_naming_one_file_is_refused_as_a_local_file_is(tmp_path):
    import uuid

    import fsspec
    import pytest

    bucket = f"memory://src-{uuid.uuid4().hex}"
    fsspec.filesystem("memory").pipe(f"{bucket}/cats/pic.png", b"not read while listing")
    assert [u.rsplit("/", 2)[-2:] for u in list_source(bucket).files["uri"]] == [["cats", "pic.png"]]
    with pytest.raises(ValueError, match="is a file, not a folder"):  # was: listed, skipped as hidden_file
        list_source(f"{bucket}/cats/pic.png")
    (tmp_path / "pic.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        list_source(str(tmp_path / "pic.png"))
