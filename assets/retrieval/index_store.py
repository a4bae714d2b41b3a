"""Keep the FAISS index in step with the embedding partitions. No Dagster here.

`update_index` decides between an incremental add and a full rebuild:
- full rebuild when there is no index yet, the encoder changed (every vector changed), a
  partition the index holds disappeared or now holds other images (a re-ingested batch: the
  state keeps a fingerprint of each partition's image ids and vectors), `index.build.needs_rebuild`
  says N outgrew the factory, or `quantizer_drift` of the new vectors exceeds
  `index.drift.DRIFT_THRESHOLD` (IVF lists, or the reduced graph's PCA);
- otherwise only the partitions not yet in the index are added (old ones are not re-added).
A rebuild measures every factory of `index.build.candidate_factories` (`index.select`) and
keeps the fastest that meets the recall target within the memory and build-time budgets; the
table of candidates is kept in the state. Tuning queries are real vectors the index does
not hold yet: a rebuild keeps a seeded sample of the catalog out of every candidate's build,
tunes on it, then adds it to the chosen index; an add tunes on a sample of the new vectors
before adding them (a batch of fewer than `MIN_TUNING_QUERIES` keeps the current tuning).
Queries made from stored vectors find their own source and its graph links at once, so
they overstate a graph's recall: nudged stored vectors measured 0.97 for `HNSW32,Flat`
at efSearch 4, where held-out demo embeddings reach 0.86. The tuner's measurement
(tie-aware recall@10 at the chosen parameters, QPS against exact search, `met_target`) is
the one stored in the state file and read by the `index_recall` check.

Generations: every update writes a new folder `<home>/indexes/<generation>/` holding the
index, the row-id → image_id table and the state (with the index file's sha256), then
switches `indexes/current.json` to it in one atomic write. Readers resolve the pointer once
and read all three from that folder, so they never mix two builds, and the state names the
encoder whose vectors the generation holds. The last `KEEP_GENERATIONS` stay (a reader may
still be using one); older ones are deleted. The index file is checked against its sha256
on the first load in a process. A local home gets faiss's own files (memory-mapped when
read), an object store the same bytes in one PUT. A home from before generations keeps its
files in `indexes/` itself until its next update.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import polars as pl
from upath import UPath

from assets.store.files import Home, read_json, read_parquet, write_bytes, write_json, write_parquet
from index.build import add_vectors, candidate_factories, needs_rebuild, sample_rows
from index.drift import DRIFT_SAMPLE, DRIFT_THRESHOLD, quantizer_drift
from index.io import index_from_bytes, index_to_bytes, read_index, write_index_atomic
from index.select import select_index
from index.tune import TuneResult, apply_params, tune_index


@dataclass(frozen=True)
class IndexConfig:
    target_recall: float = 0.95  # recall@10 the tuned search parameters must reach
    memory_budget_bytes: int | None = None  # None: no limit (see index/build.py table)
    build_budget_s: float | None = 600.0  # a candidate whose full build takes longer is rejected
    tuning_queries: int = 1000  # held-out queries for tuning and measurement
    seed: int = 0


MIN_TUNING_QUERIES = 50  # fewer new vectors than this: an add keeps the current tuning
POINTER = "current.json"
KEEP_GENERATIONS = 3  # the current generation and the two before it


def index_dir(home: Home) -> UPath:
    """`<home>/indexes`: the generations and the pointer to the current one."""
    return home.path("indexes")


def current_generation(home: Home) -> UPath | None:
    """The current generation's folder (None before any index): the one `current.json` names,
    or `indexes/` itself for a home written before generations."""
    root = index_dir(home)
    if (root / POINTER).exists():
        folder = root / read_json(root / POINTER)["generation"]
        if not (folder / "state.json").exists():
            raise FileNotFoundError(f"{root / POINTER} names index generation {folder.name}, which is missing "
                                    "or incomplete: rematerialise faiss_index to rebuild it")
        return folder
    return root if (root / "state.json").exists() else None


def load_state(home: Home) -> dict | None:
    """The state of the current index (factory, encoder, partitions, params, recall), if any."""
    folder = current_generation(home)
    return None if folder is None else read_json(folder / "state.json")


def load_index(home: Home, mmap: bool = True):
    """(faiss index with tuned params applied, image_id per row id, state), all of one generation."""
    folder = current_generation(home)
    if folder is None:
        raise FileNotFoundError("no FAISS index yet: materialise faiss_index first")
    state = read_json(folder / "state.json")
    index = _read_index(home, folder / "faiss.index", mmap, state.get("sha256"))
    apply_params(index, state["params"])
    ids = read_parquet(folder / "ids.parquet")["image_id"].to_numpy()
    if not index.ntotal == len(ids) == state["n"]:  # files of different builds (a crash between writes)
        raise ValueError(f"the index in {folder} holds {index.ntotal} vectors for {len(ids)} ids "
                         f"(state: {state['n']}); rematerialise faiss_index to rebuild it")
    return index, ids, state


_VERIFIED: set[tuple] = set()  # (path, size, mtime) of index files whose sha256 matched


def _read_index(home: Home, path: UPath, mmap: bool, sha256: str | None):
    damaged = f"the index file {path} is damaged (sha256 does not match its state); rematerialise faiss_index"
    if home.local:
        st = path.stat()
        key = (path.path, st.st_size, st.st_mtime_ns)
        if sha256 and key not in _VERIFIED:
            if _file_sha256(path.path) != sha256:
                raise ValueError(damaged)
            _VERIFIED.add(key)
        return read_index(path.path, mmap=mmap)
    if not path.exists():
        raise FileNotFoundError(f"no index at {path}")
    data = path.read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(damaged)
    return index_from_bytes(data)


def _write_generation(home: Home, index, image_ids: pl.Series, report: dict) -> dict:
    """Write a new generation (index, ids, state), switch the pointer to it, drop old ones;
    returns the state written."""
    root = index_dir(home)
    name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"  # sorts by time
    folder = root / name
    path = folder / "faiss.index"
    if home.local:
        write_index_atomic(index, path.path)
        size, digest = path.stat().st_size, _file_sha256(path.path)
    else:
        data = index_to_bytes(index)
        write_bytes(data, path)
        size, digest = len(data), hashlib.sha256(data).hexdigest()
    write_parquet(pl.DataFrame({"image_id": image_ids}), folder / "ids.parquet")
    state = {**report, "generation": name, "sha256": digest,
             "bytes_per_vector": size / max(1, index.ntotal)}
    write_json(state, folder / "state.json")
    write_json({"generation": name}, root / POINTER)  # the switch: readers now see this one
    _prune(home, keep=name)
    return state


def _prune(home: Home, keep: str) -> None:
    """Delete generations older than the last KEEP_GENERATIONS, and pre-generation files."""
    root = index_dir(home)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[:8].isdigit())
    old = [n for n in names if n != keep][: max(0, len(names) - KEEP_GENERATIONS)]
    for name in old:
        if home.local:
            shutil.rmtree(root.joinpath(name).path, ignore_errors=True)
        else:
            root.joinpath(name).fs.rm(root.joinpath(name).path, recursive=True)
    for legacy in ("faiss.index", "ids.parquet", "state.json"):
        if (root / legacy).exists():
            (root / legacy).unlink()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def update_index(home: Home, partitions: dict[str, pl.DataFrame], encoder_version: str,
                 config: IndexConfig = IndexConfig(), log=print) -> dict:
    """Bring the index up to date with `partitions` ({batch: image_id/embedding frame}); returns a report."""
    assert partitions, "no embedding partitions to index"
    started = time.perf_counter()
    try:  # resolved once: the state and files read below are of one generation
        folder = current_generation(home)
        state = None if folder is None else read_json(folder / "state.json")
    except (FileNotFoundError, ValueError) as e:  # a missing or damaged generation: build a new one
        log(f"the current index cannot be read ({e}); building a new one")
        folder, state = None, None
    d = next(iter(partitions.values()))["embedding"].dtype.size
    n_total = sum(f.height for f in partitions.values())
    fingerprints = {k: _fingerprint(f) for k, f in partitions.items()}
    new_keys = sorted(partitions) if state is None else sorted(set(partitions) - set(state["partitions"]))
    reason = None
    if state is None:
        reason = "no index yet"
    elif state["encoder_version"] != encoder_version:
        reason = f"encoder changed {state['encoder_version']} → {encoder_version}"
    elif set(state["partitions"]) - set(partitions):
        reason = "partitions disappeared"
    elif "fingerprints" not in state:
        reason = "the index's state predates partition fingerprints"
    elif changed := [k for k in state["partitions"] if state["fingerprints"].get(k) != fingerprints[k]]:
        reason = f"partitions changed: {', '.join(changed)}"
    elif needs_rebuild(state["factory"], n_total, d, config.memory_budget_bytes):
        reason = f"N={n_total} outgrew {state['factory']}"

    index = drift = None
    if reason is None and new_keys:
        try:
            index = _read_index(home, folder / "faiss.index", False, state.get("sha256"))
        except (ValueError, RuntimeError) as e:  # damaged (sha256) or unreadable by faiss
            reason = f"the current index cannot be read: {str(e).splitlines()[0]}"
    if index is not None:
        old_ids = read_parquet(folder / "ids.parquet")["image_id"]
        added = pl.concat([partitions[k].select("image_id") for k in new_keys])["image_id"]
        image_ids = pl.concat([old_ids, added])
        xb_all = _in_row_order(partitions, image_ids, d)  # rows [0, len(old_ids)) are the indexed ones
        xb_old, xb_new = xb_all[: len(old_ids)], xb_all[len(old_ids):]
        if index.ntotal != state["n"]:  # the index file of another build than the state (a crash)
            reason, index = f"the index file holds {index.ntotal} vectors, its state {state['n']}", None
        elif (drift := quantizer_drift(index, xb_new, _sample(xb_old, config))) > DRIFT_THRESHOLD:
            reason, index = f"quantizer drift {drift:.2f} > {DRIFT_THRESHOLD}", None

    if reason is not None:
        keys = sorted(partitions)
        image_ids = pl.concat([partitions[k].select("image_id") for k in keys])["image_id"]
        xb_all = _stack([partitions[k] for k in keys])
        n = len(xb_all)  # a tenth of the catalog at most, and at least one vector when there are two
        held = sample_rows(n, max(1, min(config.tuning_queries, n // 10)) if n > 1 else 0, config.seed)
        kept = np.setdiff1d(np.arange(n, dtype=np.int64), held)
        factories = candidate_factories(len(xb_all), d, config.memory_budget_bytes)
        log(f"full build over {len(kept)} vectors ({reason}), then the {len(held)} tuning queries; "
            f"candidates: {', '.join(factories)}")
        xq = xb_all[held] if len(held) else xb_all  # one vector: Flat, exact; it is its own query
        chosen = select_index(xb_all[kept], kept, xq, factories, k=10,
                              target_recall=config.target_recall,
                              memory_budget_bytes=config.memory_budget_bytes,
                              build_budget_s=config.build_budget_s, seed=config.seed, log=log)
        index, factory, tuned = chosen.index, chosen.factory, chosen.tuned
        add_vectors(index, xb_all[held], held)
        candidates = [asdict(c) for c in chosen.candidates]
        build_seconds = chosen.build_s
        mode = "rebuild"
    elif new_keys:
        factory = state["factory"]
        log(f"incremental add of {len(xb_new)} vectors from {len(new_keys)} new partitions to {factory}")
        if len(xb_new) >= MIN_TUNING_QUERIES:  # tuned on new vectors before they are added
            xq = xb_new[sample_rows(len(xb_new), config.tuning_queries, config.seed)]
            tuned = tune_index(index, xb_old, xq, k=10, target_recall=config.target_recall)
        else:
            apply_params(index, state["params"])
            tuned = TuneResult(state["params"], state["recall_at_10"], state["qps"], state["exact_qps"],
                               state["met_target"])
            log(f"{len(xb_new)} new vectors are too few to re-tune on (< {MIN_TUNING_QUERIES}); "
                "the current tuning is kept")
        t = time.perf_counter()
        add_vectors(index, xb_new, np.arange(len(xb_old), len(xb_all), dtype=np.int64))
        build_seconds = time.perf_counter() - t
        candidates = state.get("candidates", [])
        mode = "incremental"
    else:
        log("index already up to date")
        return {**state, "mode": "unchanged"}
    log(f"tuned {factory}: params {tuned.params or '(none)'}, recall@10 {tuned.recall_at_10:.4f} "
        f"(target {config.target_recall}{'' if tuned.met_target else ', NOT met'}), {tuned.qps:.0f} QPS "
        f"vs exact {tuned.exact_qps:.0f}")

    report = {
        "factory": factory, "params": tuned.params, "n": int(index.ntotal), "d": int(d),
        "encoder_version": encoder_version, "partitions": sorted(partitions),
        "fingerprints": dict(sorted(fingerprints.items())), "mode": mode,
        "reason": reason or f"added {len(new_keys)} partitions", "drift": drift,
        "recall_at_10": float(tuned.recall_at_10), "target_recall": config.target_recall,
        "met_target": bool(tuned.met_target), "qps": float(tuned.qps),
        "exact_qps": float(tuned.exact_qps), "speedup_vs_exact": float(tuned.qps / tuned.exact_qps),
        "build_seconds": build_seconds, "seconds": time.perf_counter() - started, "config": asdict(config),
        "candidates": candidates,
    }
    return _write_generation(home, index, image_ids, report)


def _fingerprint(partition: pl.DataFrame) -> str:
    """sha256 of a partition's image ids and vectors, in any row order: it changes when the
    batch is re-ingested with other images, and when its images embed to other vectors under
    the same encoder (decoded anew by another raw_images code version)."""
    ordered = partition.sort("image_id")
    digest = hashlib.sha256("\n".join(ordered["image_id"].to_list()).encode())
    digest.update(np.ascontiguousarray(ordered["embedding"].to_numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _in_row_order(partitions: dict[str, pl.DataFrame], image_ids: pl.Series, d: int) -> np.ndarray:
    """Every partition's vectors as one (N, d) array whose row r is the vector of image_ids[r]."""
    order = {k: i for i, k in enumerate(image_ids.to_list())}
    frames = pl.concat([partitions[k] for k in sorted(partitions)])
    assert frames.height == len(order), f"{frames.height} vectors for {len(order)} indexed and new image ids"
    xb = np.empty((len(order), d), np.float32)
    xb[np.array([order[i] for i in frames["image_id"]])] = frames["embedding"].to_numpy()
    return xb


def _sample(xb: np.ndarray, config: IndexConfig) -> np.ndarray:
    """A seeded sample of rows of xb (the drift test's reference: vectors already indexed)."""
    return xb[sample_rows(len(xb), DRIFT_SAMPLE, config.seed)]


def _stack(frames: list[pl.DataFrame]) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate([f["embedding"].to_numpy() for f in frames]), dtype=np.float32)
