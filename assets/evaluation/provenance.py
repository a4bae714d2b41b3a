"""Where a report's numbers come from: the settings and version of every trained asset, the
code, the Dagster run, and the host its timings were taken on.

Each configurable asset records its effective run config under the `settings` metadata key
(`assets/settings.py`); the report reads it back from the latest materialization of each
asset, so what it shows is what actually ran.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import dagster as dg

from assets.settings import SETTINGS

# the assets whose settings and versions decide a report's numbers, upstream first
TRAINED = ("image_encoder", "faiss_index", "training_pairs", "user_histories", "gutted_reranker",
           "full_vlm_reranker", "sequential_reranker", "candidates")
UI_URL_ENV = "LENSLESS_UI_URL"  # where the Dagster UI serves, for run links (default: `lensless dev`'s)
COMMIT_ENV = "LENSLESS_GIT_COMMIT"  # the commit of a deployment without a git checkout (the image)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def trained_assets(instance: dg.DagsterInstance, keys: tuple[str, ...] = TRAINED) -> dict[str, dict]:
    """Per asset of `keys` that has been materialised: its latest run id, version (the data
    version of a model or index; None for tables) and settings."""
    out = {}
    for key in keys:
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        if event is None or event.asset_materialization is None:
            continue
        metadata = event.asset_materialization.metadata
        value = {k: getattr(metadata.get(k), "value", None) for k in ("version", "generation", SETTINGS)}
        out[key] = {"run_id": event.run_id, "version": value["version"] or value["generation"],
                    "settings": value[SETTINGS]}
    return out


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """The code's commit (`-dirty` with uncommitted changes to tracked files): `$LENSLESS_GIT_COMMIT`
    where it is set, else `git` in the project's checkout; None when neither says."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def host() -> dict:
    """The machine the report's timings ran on, and its load when the report was written."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {p: installed(p) for p in ("lensless", "torch", "transformers", "dagster")}
                    | {"faiss": installed("faiss-cpu") or installed("faiss-gpu") or installed("faiss-gpu-cu12")},
    }


def run_url(run_id: str) -> str:
    """The run's page in the Dagster UI (`$LENSLESS_UI_URL`, default `lensless dev`'s address)."""
    return f"{os.environ.get(UI_URL_ENV, 'http://127.0.0.1:3000').rstrip('/')}/runs/{run_id}"


def provenance(instance: dg.DagsterInstance, run_id: str) -> dict:
    """The report's `provenance` section."""
    return {"run": {"id": run_id, "url": run_url(run_id)}, "commit": git_commit(), "host": host(),
            "assets": trained_assets(instance)}
