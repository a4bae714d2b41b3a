"""The whole graph on the embedded default against the same graph past one machine, side by side.

    python bench/scale.py [--images 200] [--repeats 1]

Runs the test suite's small graph (`TINY` run config of tests/orchestration/test_pipeline_end_to_end.py,
the demo catalog at `--images`) in a fresh process per run, alternating:
- embedded: a local `LENSLESS_HOME`, the SQLite instance written by lensless;
- scale: `deploy/dagster-postgres.yaml` on a real PostgreSQL server and `LENSLESS_HOME=s3://...`
  on moto's S3 server (both started by tests/servers.py on 127.0.0.1).
Each run renders the demo into its own home (and instance: one Postgres database per repeat),
so both do the same work. Prints the seconds of
each run and the ratio of the medians. Needs PostgreSQL (Debian's package) and the dev extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.orchestration.test_pipeline_end_to_end import TINY  # noqa: E402
from tests.orchestration.test_scale import RUN_GRAPH  # noqa: E402
from tests.servers import create_database, postgres_server, s3_server  # noqa: E402


def one_run(env: dict, images: int, cwd: Path) -> float:
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN_GRAPH, str(images), json.dumps(TINY)], env=env, cwd=cwd,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"graph failed:\n{done.stderr[-4000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    base = {**os.environ, "PYTHONPATH": str(ROOT), "LENSLESS_LOG_LEVEL": "WARNING"}
    base.pop("DAGSTER_HOME", None)
    times: dict[str, list[float]] = {"embedded": [], "postgres+s3": []}
    tmp = Path(tempfile.mkdtemp(prefix="lensless-bench-scale-"))
    try:
        with postgres_server() as pg, s3_server() as s3:
            for i in range(args.repeats):
                local = tmp / f"embedded{i}"
                env = {**base, "LENSLESS_HOME": str(local / "home")}
                times["embedded"].append(one_run(env, args.images, local / "cwd"))
                remote = tmp / f"scale{i}"
                (remote / "dagster").mkdir(parents=True)
                shutil.copy(ROOT / "deploy" / "dagster-postgres.yaml", remote / "dagster" / "dagster.yaml")
                env = {**base, **create_database(pg, f"bench{i}"), **s3, "DAGSTER_HOME": str(remote / "dagster"),
                       "LENSLESS_HOME": f"s3://lensless/bench{i}", "LENSLESS_CACHE": str(remote / "cache")}
                times["postgres+s3"].append(one_run(env, args.images, remote / "cwd"))
                print(f"repeat {i}: embedded {times['embedded'][-1]:.0f} s, "
                      f"postgres+s3 {times['postgres+s3'][-1]:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"images": args.images, "seconds": times, "median": med,
                      "ratio_scale_over_embedded": med["postgres+s3"] / med["embedded"]}, indent=1))


if __name__ == "__main__":
    main()
