# ruff: noqa: E741 - D, I are faiss's names for the distance and id tables

import os

import faiss
import numpy as np
import pytest

from index.build import build_index
from index.io import read_index
from index.shards import build_shard, merge_shards_ondisk, train_ivf_template


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF32,PQ8x4"])
def test_merged_shards_equal_single_build(data, tmp_path, factory):
    xb, ids, xq = data["xb"], data["ids"], data["xq"]
    template = train_ivf_template(xb[:4000], factory, path=tmp_path / "trained.index")
    parts = np.array_split(np.random.default_rng(0).permutation(len(xb)), 3)
    shards = [
        build_shard(template, xb[p], ids[p], tmp_path / f"shard{i}.index")
        for i, p in enumerate(parts)
    ]
    merged = merge_shards_ondisk(
        template, shards, tmp_path / "merged.index", tmp_path / "merged.ivfdata"
    )
    single = build_index(xb, ids, factory, xt=xb[:4000])
    assert merged.ntotal == single.ntotal == len(xb)
    reread = read_index(tmp_path / "merged.index")  # mmaps merged.ivfdata
    for index in (merged, single, reread):
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", 8)
    D0, I0 = single.search(xq, 10)
    for index in (merged, reread):
        D, I = index.search(xq, 10)
        np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-6)
        assert (I == I0).mean() > 0.99  # equal up to the order of exact ties


def test_merge_refuses_to_overwrite_ivfdata(data, tmp_path):
    template = train_ivf_template(data["xb"][:4000], "IVF64,Flat")
    shard = build_shard(template, data["xb"][:100], data["ids"][:100], tmp_path / "s.index")
    (tmp_path / "live.ivfdata").write_bytes(b"serving")
    with pytest.raises(AssertionError, match="live.ivfdata"):
        merge_shards_ondisk(template, [shard], tmp_path / "m.index", tmp_path / "live.ivfdata")
    assert not os.path.exists(tmp_path / "m.index")


def test_template_needs_ivf(data):
    with pytest.raises(AssertionError, match="valid families"):
        train_ivf_template(data["xb"], "HNSW32")
