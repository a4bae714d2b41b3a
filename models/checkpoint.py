"""Checkpoints as safetensors plus a JSON config. Pickle is never used.

A checkpoint directory holds `weights.safetensors` (only the tensors that were trained) and
`config.json` (the dataclass that rebuilds the model, plus free-form `extra` fields such as
the base model's identity). The directory is local; each file is written atomically (a
temporary file in the same directory, fsynced, then renamed into place).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
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
    payload = {"config": cfg, "extra": extra or {}}
    # safetensors wants contiguous, non-shared CPU tensors.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    _atomic_write_bytes(directory / WEIGHTS, save(flat))
    _atomic_write_bytes(directory / CONFIG, json.dumps(payload, indent=2, sort_keys=True).encode())
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Return (tensors, config dict, extra dict) from a directory written by `save_checkpoint`."""
    directory = Path(directory)
    missing = [n for n in (WEIGHTS, CONFIG) if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {directory} is missing {missing}")
    payload = json.loads((directory / CONFIG).read_text())
    return load_file(str(directory / WEIGHTS)), payload["config"], payload.get("extra", {})
