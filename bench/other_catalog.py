"""The whole pipeline on a catalog that is not the demo's: real images, another behaviour model.

    python bench/other_catalog.py [--home DIR] [--users 400] [--seed 0] [--json]

Writes scikit-learn's 1,797 handwritten digits (real 8x8 scans, scaled to 64 px PNGs, one
folder per digit) and an engagement log drawn from a behaviour model that shares nothing with
the demo's generator, then runs `lensless run --source DIR --engagement FILE` on a fresh home
(the real command line, in a subprocess) and prints the report's two tasks, system by system,
with the paired differences the issue's targets are stated in. About 8 minutes on 2 cores.

The behaviour model: each user likes one to three digits (Dirichlet weights); every image has
a popularity drawn from a Zipf law, independent of its digit; a user's next engagement is a
popular image (probability `--popular`), an image of a liked digit, or, half the time after
an engagement, another image of the digit just engaged with (a session); a quarter of the
events are saves, at times spread over 90 days. Nothing of it is tuned to the pipeline: the
digits give the pixels a signal, popularity and the sessions give behaviour one.

The last line is JSON: per task NDCG@10 by system, gutted minus each other system with its
95% interval, and `targets` (user task >= 1.3x retrieval and above it beyond the interval,
related images >= 1.1x retrieval, no system above the gutted model beyond the interval).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_digits(folder: Path, px: int = 64) -> list[tuple[str, int]]:
    """The digits as `folder/<digit>/<i>.png`; returns (path, digit) per image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = folder / str(label) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = (255 - image * 255 / 16).astype(np.uint8)  # dark ink on white, as scanned
        Image.fromarray(grey).resize((px, px), Image.Resampling.BICUBIC).convert("RGB").save(path)
        out.append((str(path), int(label)))
    return out


def engagement_log(images: list[tuple[str, int]], users: int, seed: int, popular: float = 0.3,
                   events_per_user: float = 40.0) -> list[dict]:
    """Events {user_id, image_uri, event, ts} of the behaviour model in the module doc."""
    rng = np.random.default_rng(seed)
    paths = np.array([p for p, _ in images])
    labels = np.array([d for _, d in images])
    popularity = 1.0 / (1 + rng.permutation(len(paths))) ** 1.1  # Zipf, independent of the digit
    popularity /= popularity.sum()
    by_digit = {d: np.flatnonzero(labels == d) for d in range(10)}
    start = np.datetime64("2026-01-01T00:00:00")
    rows = []
    for u in range(users):
        liked = rng.choice(10, size=rng.integers(1, 4), replace=False)
        weights = rng.dirichlet(np.ones(len(liked)))
        times = np.sort(rng.uniform(0, 90 * 86400, size=max(2, rng.poisson(events_per_user))))
        last = None
        for t in times:
            if last is not None and rng.random() < 0.5:  # a session: the same digit again
                pool = by_digit[labels[last]]
                item = int(rng.choice(pool, p=popularity[pool] / popularity[pool].sum()))
            elif rng.random() < popular:
                item = int(rng.choice(len(paths), p=popularity))
            else:
                pool = by_digit[int(rng.choice(liked, p=weights))]
                item = int(rng.choice(pool))
            last = item
            rows.append({"user_id": f"u{u:04d}", "image_uri": str(paths[item]),
                         "event": "save" if rng.random() < 0.25 else "click",
                         "ts": str(start + np.timedelta64(int(t), "s"))})
    return rows


def run_pipeline(home: Path, source: Path, engagement: Path) -> float:
    """`lensless run` on a fresh home, in a subprocess; returns its wall seconds."""
    env = {**os.environ, "LENSLESS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "lensless"), "run", "--source", str(source),
                    "--engagement", str(engagement)], env=env, check=True, cwd=ROOT)
    return time.perf_counter() - started


def task_summary(section: dict) -> dict:
    """NDCG@10 per system, gutted minus each bar [95% interval], and the targets' inputs."""
    systems = {name: round(s["ndcg_at_10"], 4) for name, s in section["systems"].items()}
    diffs = {k.removeprefix("gutted_vs_"): [round(c["diff"], 4), round(c["ci"][0], 4), round(c["ci"][1], 4)]
             for k, c in section["comparisons"].items() if k.startswith("gutted_vs_")}
    return {"ndcg_at_10": systems, "gutted_minus": diffs,
            "gutted_over_retrieval": round(systems["gutted"] / max(systems["retrieval"], 1e-9), 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", help="the LENSLESS_HOME to create (default: a temporary folder)")
    ap.add_argument("--users", type=int, default=400, help="users in the engagement log")
    ap.add_argument("--popular", type=float, default=0.3, help="share of engagements drawn by popularity alone")
    ap.add_argument("--seed", type=int, default=0, help="seed of the behaviour model")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="lensless-other-"))
    home = Path(args.home).resolve() if args.home else work / "home"
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"--home {home} is not empty: this bench needs a fresh home")
    images = write_digits(work / "digits")
    events = engagement_log(images, args.users, args.seed, args.popular)
    log = work / "engagement.csv"
    import polars as pl

    pl.DataFrame(events).write_csv(log)
    seconds = run_pipeline(home, work / "digits", log)
    report = json.loads((home / "reports" / json.loads((home / "reports" / "latest.json").read_text())["run_id"]
                         / "report.json").read_text())
    tasks = {"related_images": task_summary(report)}
    if "user_task" in report:
        tasks["for_a_user"] = task_summary(report["user_task"])
    u, r = tasks.get("for_a_user"), tasks["related_images"]
    beaten = [f"{task}: {bar}" for task, t in tasks.items() for bar, (_, _, hi) in t["gutted_minus"].items()
              if bar != "challenger" and hi < 0]
    targets = {
        "user_gutted_1.3x_retrieval": bool(u and u["gutted_over_retrieval"] >= 1.3
                                           and u["gutted_minus"]["retrieval"][1] > 0),
        "related_gutted_1.1x_retrieval": r["gutted_over_retrieval"] >= 1.1,
        "no_system_beats_gutted": not beaten,
    }
    result = {"images": len(images), "users": args.users, "events": len(events), "seed": args.seed,
              "popular": args.popular, "home": str(home), "pipeline_seconds": round(seconds, 1),
              "tasks": tasks, "beaten_by": beaten, "targets": targets}
    if not args.json:
        for task, t in tasks.items():
            print(f"{task}: " + ", ".join(f"{k} {v:.3f}" for k, v in t["ndcg_at_10"].items()))
            print("  gutted minus " + ", ".join(f"{k} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                                                for k, (d, lo, hi) in t["gutted_minus"].items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
