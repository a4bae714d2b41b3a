"""Resumable training: one file holding everything a killed run needs to go on where it
stopped. No Dagster here.

A `ProgressFile` is written by the trainer at its evaluations (and at least every few
minutes between them): the trained tensors, the optimizer's state, the random generators'
states and the loop's position, in one safetensors file whose header carries the JSON
metadata. It is written atomically (a temporary file, fsynced, renamed), so a kill while
saving leaves the previous one. Each file records the `fingerprint` of the run that wrote
it (the inputs, the settings and the untrained state), the file's format and the caller's
`identity` (the asset's code version); a run that differs in any of them starts afresh
instead of resuming, so a file never leaks into different training or code. The file ends
holding the finished run; the caller clears it once the trained model is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from models.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)
META_KEY = "lensless_progress"
FORMAT = 1  # of the saved progress; a file of another format is not resumed


FULL_HASH_BYTES = 256 << 20  # a larger array is fingerprinted by its shape and evenly spaced rows


def fingerprint(*parts: Any) -> str:
    """sha256 over `parts`: arrays and tensors by dtype, shape and bytes (an array over
    `FULL_HASH_BYTES`, e.g. a large catalog's pixels, by about that many bytes of evenly
    spaced rows), anything else as sorted JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):  # as raw bytes: numpy has no bfloat16
            h.update(f"{part.dtype}{tuple(part.shape)}".encode())
            part = part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode())
            if part.nbytes > FULL_HASH_BYTES and part.ndim and len(part) > 1:
                part = part[:: -(-part.nbytes // FULL_HASH_BYTES)]
            h.update(np.ascontiguousarray(part).data)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class ProgressFile:
    """Where a run keeps its progress: a local file; `identity` (e.g. the asset's code version)
    must match for a saved run to be resumed; `after_save`, called with the path after each
    save, and `after_clear`, after it is removed, keep a copy elsewhere in step (object
    storage, so that another machine can resume)."""

    path: Path
    identity: str = ""
    after_save: Callable[[Path], None] | None = None
    after_clear: Callable[[], None] | None = None

    def _key(self, fingerprint: str) -> str:
        return f"{FORMAT}/{self.identity}/{fingerprint}"

    def save(self, fingerprint: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        header = json.dumps({"fingerprint": self._key(fingerprint), **meta})
        atomic_write_bytes(Path(self.path), save(flat, metadata={META_KEY: header}))
        if self.after_save is not None:
            self.after_save(Path(self.path))

    def load(self, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, meta) saved by a run with this `fingerprint`; None when there is no file,
        or it is unreadable or another run's (logged)."""
        path = Path(self.path)
        if not path.exists():
            return None
        data = path.read_bytes()
        try:
            tensors = load(data)
            meta = json.loads(_header(data).get(META_KEY, "{}"))
        except (SafetensorError, ValueError) as e:
            log.warning("progress file %s is unreadable (%s); starting afresh", path, e)
            return None
        if meta.pop("fingerprint", None) != self._key(fingerprint):
            log.info("progress file %s was written for other inputs, settings or code; starting afresh", path)
            return None
        return tensors, meta

    def clear(self) -> None:
        Path(self.path).unlink(missing_ok=True)
        if self.after_clear is not None:
            self.after_clear()


def _header(data: bytes) -> dict:
    """The metadata of a safetensors file's header (safetensors' `load` returns tensors only)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8: 8 + n]).get("__metadata__", {})


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat tensors `opt.<param index>.<name>`."""
    state = opt.state_dict()["state"]
    return {f"opt.{i}.{k}": v if isinstance(v, torch.Tensor) else torch.tensor(v)
            for i, s in state.items() for k, v in s.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what `optimizer_tensors` saved into `opt` (built with the same parameter groups)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def rng_tensors(gen: torch.Generator, device: torch.device, device_gen: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
    """The states of `gen` (and of `device_gen`, a CUDA generator) and of torch's global
    generators: the CPU's, and the training `device`'s when it is a GPU (only that one: the
    others are not touched)."""
    out = {"rng.gen": gen.get_state(), "rng.torch": torch.get_rng_state()}
    if device_gen is not None and device_gen is not gen:
        out["rng.device_gen"] = device_gen.get_state()
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(gen: torch.Generator, tensors: dict[str, torch.Tensor], device: torch.device,
                device_gen: torch.Generator | None = None) -> None:
    gen.set_state(tensors["rng.gen"])
    if device_gen is not None and device_gen is not gen and "rng.device_gen" in tensors:
        device_gen.set_state(tensors["rng.device_gen"])
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
