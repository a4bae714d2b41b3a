"""Checkpoints as safetensors plus a JSON config. Pickle is never used.

A checkpoint directory holds `weights.safetensors` (only the tensors that were trained) and
`config.json` (the dataclass that rebuilds the model, plus free-form `extra` fields such as
the base model's identity) and the sha256 of the weights, checked on load, so a damaged file
is an error naming it, never a model that scores NaN. The directory is local; each file is
written atomically (a temporary file in the same directory, fsynced, then renamed into place).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    config: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `tensors` and `config` (a dataclass or dict) atomically into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    # safetensors wants contiguous, non-shared CPU tensors.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    weights = save(flat)
    payload = {"config": cfg, "extra": extra or {}, "sha256": hashlib.sha256(weights).hexdigest()}
    atomic_write_bytes(directory / WEIGHTS, weights)
    atomic_write_bytes(directory / CONFIG, json.dumps(payload, indent=2, sort_keys=True).encode())
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Return (tensors, config dict, extra dict) from a directory written by `save_checkpoint`."""
    directory = Path(directory)
    missing = [n for n in (WEIGHTS, CONFIG) if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {directory} is missing {missing}")
    try:
        payload = json.loads((directory / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint config {directory / CONFIG} is damaged ({e}); retrain the model") from e
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise ValueError(f"{directory / CONFIG} is not a lensless checkpoint's config (no 'config' object); "
                         "point at a directory a lensless model saved")
    weights = (directory / WEIGHTS).read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    if payload.get("sha256", digest) != digest:  # checkpoints written before digests load unchecked
        raise ValueError(f"checkpoint weights {directory / WEIGHTS} are damaged (sha256 {digest[:12]}, "
                         f"expected {payload['sha256'][:12]}); retrain the model that wrote them")
    return load(weights), payload["config"], payload.get("extra", {})


def config_kwargs(config_cls: type, values: dict, directory: str | Path) -> dict:
    """`values` (a checkpoint's config) as keyword arguments of the dataclass `config_cls`;
    ValueError naming the fields it does not have (another model's checkpoint, or one of a
    newer lensless)."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise ValueError(f"checkpoint {directory} has {config_cls.__name__} fields this lensless does not know: "
                         f"{unknown}; it was saved by another model or version")
    return values
