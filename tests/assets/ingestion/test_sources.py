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
