"""`ingest_batch` with a pool of reader/decoder threads gives exactly the serial result."""

import numpy as np
import pytest

from assets.ingestion.batch import ingest_batch
from assets.ingestion.decode import DecodePolicy
from assets.ingestion.sources import list_source
from assets.store.npy import read_npy
from tests.assets.image_files import make_mixed_folder


def test_threads_give_the_serial_result(tmp_path):
    files = make_mixed_folder(tmp_path / "src")
    entries = list_source(str(tmp_path / "src")).files
    policy = DecodePolicy(size=32)
    serial = ingest_batch("b", entries, tmp_path / "serial.npy", policy, workers=1)
    pooled = ingest_batch("b", entries, tmp_path / "pooled.npy", policy, workers=4)
    for name in ("manifest", "quarantine", "duplicates", "skipped"):
        assert getattr(pooled, name).drop("ingested_at", strict=False).equals(
            getattr(serial, name).drop("ingested_at", strict=False)), name
    assert np.array_equal(read_npy(tmp_path / "pooled.npy"), read_npy(tmp_path / "serial.npy"))
    assert serial.manifest.height == len(files["good"])  # the exact copy is a duplicate, not a row
    assert pooled.duplicates["uri"].to_list() == [files["copy"]]
    assert dict(zip(pooled.quarantine["uri"], pooled.quarantine["reason"], strict=True)) == files["bad"]


def test_an_error_in_a_worker_propagates_and_leaves_no_file(tmp_path, monkeypatch):
    import assets.ingestion.batch as batch

    make_mixed_folder(tmp_path / "src")
    entries = list_source(str(tmp_path / "src")).files
    decode = batch.decode_image
    photo = (tmp_path / "src").rglob("photo.jpg").__next__().read_bytes()

    def broken(data, policy):  # a bug in the decoder, not a bad file
        if data == photo:
            raise RuntimeError("decoder bug")
        return decode(data, policy)

    monkeypatch.setattr(batch, "decode_image", broken)
    with pytest.raises(RuntimeError, match="decoder bug"):
        ingest_batch("b", entries, tmp_path / "p.npy", DecodePolicy(size=32), workers=3)
    assert list(tmp_path.glob("p.npy*")) == []


class Forbidden(Exception):
    """What fsspec's HTTP backend raises for a 403 (aiohttp.ClientResponseError): not an OSError."""


def test_a_file_the_backend_cannot_read_is_quarantined_whatever_it_raises(tmp_path):
    make_mixed_folder(tmp_path / "src")
    entries = list_source(str(tmp_path / "src")).files

    def read(uri):
        if uri.endswith("photo.jpg"):
            raise Forbidden("403, message='Forbidden'")
        with open(uri, "rb") as f:
            return f.read()

    out = ingest_batch("b", entries, tmp_path / "p.npy", DecodePolicy(size=32), read=read, workers=3)
    row = out.quarantine.filter(out.quarantine["uri"].str.ends_with("photo.jpg")).row(0, named=True)
    assert row["reason"] == "undecodable" and "Forbidden: 403" in row["detail"]
    assert not any(u.endswith("photo.jpg") for u in out.manifest["uri"]) and out.manifest.height > 0


def test_a_negative_label_depth_is_refused_before_listing(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ValueError, match="--label-depth must be >= 0"):
        list_source(str(tmp_path / "src"), label_depth=-1)
