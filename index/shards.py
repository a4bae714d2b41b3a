"""Large-N builds: one trained IVF template, one shard per partition, merged on disk.

This is the FAISS billion-scale recipe (faiss/benchs/distributed_ondisk and
``faiss.contrib.ondisk.merge_ondisk``):

1. ``train_ivf_template`` trains the coarse quantizer (and PQ/OPQ) once on a sample and
   writes the empty trained index.
2. ``build_shard`` clones the template, adds one partition's vectors under their global
   ids and writes the shard. Shards share the quantizer, so list i means the same cell in
   every shard; they can be built in parallel, on different machines.
3. ``merge_shards_ondisk`` concatenates list i of every shard into one
   ``OnDiskInvertedLists`` file (``.ivfdata``, mmapped at search time) and writes a small
   index file that points to it. Search results equal those of one index holding all
   vectors (up to the order of exact ties).

Only IVF factories can be sharded this way; ``build.choose_factory`` picks them from 100k
vectors up.
"""

from __future__ import annotations

import logging
import os

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from .build import family, make_empty, training_sample
from .io import write_index_atomic

LOG = logging.getLogger(__name__)


def train_ivf_template(
    xt: np.ndarray, factory: str, path: str | os.PathLike | None = None, seed: int = 0
) -> faiss.Index:
    """Trained, empty IVF index for ``factory`` (inner product); written to ``path`` if given.

    ``xt`` is the training sample (a seeded subsample is taken if it is larger than needed)."""
    assert family(factory).startswith("ivf"), (
        f"shards need an IVF factory, got {factory!r} ({family(factory)}); valid families: ivf_flat, ivf_pq"
    )
    xt = np.ascontiguousarray(xt, dtype=np.float32)
    template = make_empty(factory, xt.shape[1])
    template.train(training_sample(template, xt, seed))
    if path is not None:
        write_index_atomic(template, path)
    return template


def build_shard(
    template: faiss.Index, xb: np.ndarray, ids: np.ndarray, path: str | os.PathLike
) -> str:
    """Add one partition (xb under global int64 ``ids``) to a copy of template; write it to path."""
    assert template.is_trained and template.ntotal == 0, (
        f"template must be trained and empty, got is_trained={template.is_trained}, ntotal={template.ntotal}"
    )
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    assert ids.shape == (len(xb),), f"ids shape {ids.shape} != ({len(xb)},)"
    shard = faiss.clone_index(template)
    shard.add_with_ids(xb, ids)
    return write_index_atomic(shard, path)


def merge_shards_ondisk(
    template: faiss.Index,
    shard_paths: list[str | os.PathLike],
    out_index_path: str | os.PathLike,
    ivfdata_path: str | os.PathLike,
) -> faiss.Index:
    """Merge shard files into ``ivfdata_path`` + an index file at ``out_index_path``.

    ``ivfdata_path`` must not exist: the index file records its name, so it cannot be
    written to a temp name and renamed, and overwriting one that a live index mmaps would
    corrupt it. Use a fresh (e.g. versioned) name per build. Returns the merged index."""
    ivfdata_path = os.path.abspath(ivfdata_path)  # the index file stores this name verbatim
    assert shard_paths, "no shards to merge"
    assert not os.path.exists(ivfdata_path), (
        f"refusing to overwrite {ivfdata_path!r}: an index may be serving from it; use a new name"
    )
    missing = [os.fspath(p) for p in shard_paths if not os.path.exists(p)]
    assert not missing, f"missing shard files: {missing}"
    os.makedirs(os.path.dirname(ivfdata_path), exist_ok=True)
    index = faiss.clone_index(template)
    merge_ondisk(index, [os.fspath(p) for p in shard_paths], ivfdata_path)
    LOG.info("merged %d shards, %d vectors -> %s", len(shard_paths), index.ntotal, ivfdata_path)
    write_index_atomic(index, out_index_path)
    return index
