"""Hostile inputs and corrupt state through the `lensless` command line, each case classified.

    python bench/hostile.py [--only SUBSTRING,...] [--json]

Builds one small trained home (the test suite's TINY graph on its DEMO_IMAGES, about a
minute), then runs every case on its own copy of that home, as a user would: the real CLI in
a fresh process. A case is one bad input (an image that is not one, a bomb, a dead URL, a
broken engagement file, a writing SQL statement, a mistyped command) or one corruption of
the home's state (a truncated or flipped checkpoint, index, table, pointer or JSON file)
followed by the command that reads it. Each ends as:

- clean: it failed with one line naming the problem (no traceback), or succeeded where
  success is the right answer;
- traceback: a Python traceback reached the terminal;
- unnamed: it failed in one line, but the line does not name the damaged file;
- wrong: exit code 0 where it must fail, or a check of its answer failed (a NaN score, an
  image recommended twice, a file written outside the lake);
- hang: it ran past the case's timeout;
- setup: the harness could not prepare the case (a bug here, not in lensless).

Prints one row per case and the counts; with --json the last line is the whole result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.orchestration.test_pipeline_end_to_end import DEMO_IMAGES, TINY  # noqa: E402
from tests.orchestration.test_scale import RUN_GRAPH  # noqa: E402


@dataclass
class Case:
    name: str
    args: list[str] | Callable[[Path, Path], list[str]]  # or setup(home, scratch) -> args
    expect: str  # "error", "ok" or "any" (either, as long as it is clean)
    check: Callable[[subprocess.CompletedProcess, Path], str | None] | None = None  # a wrong answer, or None
    timeout: float = 120
    says: str | None = None  # what a failure must name (the damaged file), else it is "unnamed"


def env_for(home: Path) -> dict:
    return {**os.environ, "LENSLESS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PYTHONPATH": str(ROOT),
            "LENSLESS_LOG_LEVEL": "WARNING"}


def lensless(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=ROOT, env=env_for(home),
                          capture_output=True, text=True, timeout=timeout)


# ---- what the cases write -------------------------------------------------------------

def _jpeg(path: Path, side: int = 64, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).convert(mode).save(path, quality=90)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _bomb_png(path: Path) -> Path:
    """A valid PNG header claiming 60,000 x 60,000 pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    return _bytes(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                  + chunk(b"IEND", b""))


def _png16(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)).save(path)  # mode I;16
    return path


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path: Path, at: float = 0.6, size: int = 4096) -> None:
    """Overwrite `size` bytes inside the file with garbage, keeping its length."""
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * at), max(0, len(data) - size))
    data[start:start + size] = np.random.default_rng(0).integers(0, 256, min(size, len(data) - start), np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _one(home: Path, pattern: str) -> Path:
    found = sorted(home.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} in {home}")
    return found[-1]


def _champion_weights(home: Path) -> Path:
    from assets.store.files import Home
    from assets.store.models import pointers

    version = pointers(Home.at(home), "reranker_champion")["current"]
    return _one(home / "models" / "gutted_reranker" / version, "*.safetensors")


def _index_file(home: Path, name: str) -> Path:
    generation = json.loads((home / "indexes" / "current.json").read_text())["generation"]
    return home / "indexes" / generation / name


def _an_image_id(home: Path) -> str:
    from assets.store.files import Home
    from assets.store.lake import read_table

    return read_table(Home.at(home), "raw_images")["image_id"][0]


def _a_user(home: Path) -> str:
    from assets.store.files import Home
    from assets.store.lake import read_table

    return read_table(Home.at(home), "user_histories")["user_id"][0]


# ---- checks of an answer that exited 0 ----------------------------------------------------

def _recommendations_are_sound(done: subprocess.CompletedProcess, home: Path) -> str | None:
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    ids = [r["image_id"] for r in rows]
    if len(ids) != len(set(ids)):
        return "an image is recommended twice"
    if not all(np.isfinite(r["score"]) for r in rows):
        return "a score is not finite"
    return None


def _nothing_written_outside(target: Path) -> Callable:
    def check(done, home):
        return f"{target} was written" if target.exists() else None
    return check


# ---- the cases ----------------------------------------------------------------------------

def cases() -> list[Case]:
    def corrupt_then(corrupt: Callable[[Path], None], *args: str):
        def setup(home: Path, scratch: Path) -> list[str]:
            image = _an_image_id(home)  # before the corruption, which may be of the table it reads
            corrupt(home)
            return [a.replace("{image}", image) for a in args]
        return setup

    def recommend_file(make: Callable[[Path], Path]):
        return lambda home, scratch: ["recommend", str(make(scratch)), "--json"]

    def ingest_folder(make: Callable[[Path], None], *extra: str):
        def setup(home: Path, scratch: Path) -> list[str]:
            src = scratch / "src"
            src.mkdir(parents=True, exist_ok=True)
            make(src)
            return ["ingest", str(src), "--json", *extra]
        return setup

    def engagement(text: str | None, write: Callable[[Path, str], Path] | None = None):
        def setup(home: Path, scratch: Path) -> list[str]:
            src = scratch / "src"
            _jpeg(src / "a" / "new.jpg")
            path = scratch / "events.csv"
            if write is not None:
                path = write(scratch, _an_image_id(home))
            elif text is not None:
                path.write_text(text.replace("{image}", _an_image_id(home)))
            return ["ingest", str(src), "--engagement", str(path), "--json"]
        return setup

    def parquet_time_ts(scratch: Path, image: str) -> Path:
        import datetime

        import polars as pl

        path = scratch / "events.parquet"
        pl.DataFrame({"user_id": ["u1"], "image_id": [image], "event": ["click"],
                      "ts": [datetime.time(1, 2)]}).write_parquet(path)
        return path

    def fifo(name: str) -> Callable[[Path], None]:
        return lambda src: (_jpeg(src / "a" / "ok.jpg"), os.mkfifo(src / "a" / name))

    def symlink_loop(src: Path) -> None:
        _jpeg(src / "a" / "ok.jpg")
        (src / "a" / "loop").symlink_to(src / "a", target_is_directory=True)

    def dangling(src: Path) -> None:
        _jpeg(src / "a" / "ok.jpg")
        (src / "a" / "gone.jpg").symlink_to(src / "nowhere.jpg")

    def odd_names(src: Path) -> None:
        for name in ("sp ace.jpg", "ünï©ødé.jpg", "new\nline.jpg", "-dash.jpg", ".hidden.jpg"):
            _jpeg(src / "odd" / name)

    def only_text(src: Path) -> None:
        (src / "README.txt").write_text("not an image")

    def registered_then_deleted(home: Path, scratch: Path) -> list[str]:
        path = scratch / "events.csv"
        path.write_text(f"user_id,image_id,event,ts\nu1,{_an_image_id(home)},click,2025-01-01T00:00:00Z\n")
        src = scratch / "src"
        _jpeg(src / "a" / "first.jpg")
        done = lensless(home, "ingest", str(src), "--engagement", str(path))
        assert done.returncode == 0, done.stderr
        path.unlink()
        _jpeg(src / "a" / "second.jpg")
        return ["ingest", str(src), "--json"]

    def ingest_with_a_file_at(*parts: str):
        """A file where the home (no parts) or one of its folders should be, then an ingest."""
        def setup(home: Path, scratch: Path) -> list[str]:
            target = home.joinpath(*parts)
            shutil.rmtree(target)
            target.write_text("not a folder")
            _jpeg(scratch / "src" / "a" / "new.jpg")
            return ["ingest", str(scratch / "src"), "--json"]
        return setup

    def rm(*parts: str) -> Callable[[Path], None]:
        return lambda home: shutil.rmtree(home.joinpath(*parts))

    outside = Path(tempfile.gettempdir()) / "lensless-hostile-outside.csv"
    return [
        # images given to `recommend`
        Case("recommend a text file (/etc/passwd)", ["recommend", "/etc/passwd", "--json"], "error"),
        Case("recommend an empty file", recommend_file(lambda d: _bytes(d / "empty.jpg", b"")), "error"),
        Case("recommend a truncated JPEG", recommend_file(lambda d: (lambda p: (_truncate(p, 0.3), p)[1])(
            _jpeg(d / "cut.jpg", 256))), "any", _recommendations_are_sound),
        Case("recommend a decompression bomb (60k x 60k PNG header)", recommend_file(lambda d: _bomb_png(d / "bomb.png")),
             "error", timeout=60),
        Case("recommend a 16-bit PNG", recommend_file(lambda d: _png16(d / "deep.png")), "ok", _recommendations_are_sound),
        Case("recommend a CMYK JPEG", recommend_file(lambda d: _jpeg(d / "cmyk.jpg", mode="CMYK")), "ok",
             _recommendations_are_sound),
        Case("recommend a missing file", ["recommend", "/nonexistent/x.jpg"], "error"),
        Case("recommend a directory", ["recommend", "/tmp"], "error"),
        Case("recommend an unknown image id", ["recommend", "no-such-id"], "error"),
        Case("recommend a catalog image", lambda h, s: ["recommend", _an_image_id(h), "--json"], "ok",
             _recommendations_are_sound),
        Case("recommend -k 0", lambda h, s: ["recommend", _an_image_id(h), "-k", "0"], "error"),
        Case("recommend -k -5", lambda h, s: ["recommend", _an_image_id(h), "-k", "-5"], "error"),
        Case("recommend -k 10000000000", lambda h, s: ["recommend", _an_image_id(h), "-k", "10000000000", "--json"],
             "any", _recommendations_are_sound, timeout=60),
        Case("recommend -k abc", lambda h, s: ["recommend", _an_image_id(h), "-k", "abc"], "error"),
        Case("recommend for an unknown user", ["recommend", "--user", "nobody"], "error"),
        Case("recommend for a user", lambda h, s: ["recommend", "--user", _a_user(h), "--json"], "ok",
             _recommendations_are_sound),
        Case("recommend with neither image nor user", ["recommend"], "error"),
        # sources given to `ingest`
        Case("ingest a missing folder", ["ingest", "/nonexistent/folder"], "error"),
        Case("ingest an empty folder", ingest_folder(lambda src: None), "error"),
        Case("ingest a folder with a symlink loop", ingest_folder(symlink_loop), "ok"),
        Case("ingest a folder with a dangling symlink", ingest_folder(dangling), "ok"),
        Case("ingest odd file names", ingest_folder(odd_names), "ok"),
        Case("ingest a folder of non-images", ingest_folder(only_text), "ok"),
        Case("ingest a truncated and an empty image", ingest_folder(lambda src: (
            _truncate(_jpeg(src / "a" / "cut.jpg", 256), 0.2), _bytes(src / "a" / "empty.jpg", b""))), "ok"),
        Case("ingest a bomb", ingest_folder(lambda src: _bomb_png(src / "a" / "bomb.png")), "ok", timeout=60),
        Case("ingest http:// from a dead host", ["ingest", "http://127.0.0.1:9/images/"], "error", timeout=60),
        Case("ingest ftp:// from a dead host", ["ingest", "ftp://127.0.0.1:9/images/"], "error", timeout=60),
        Case("ingest an unknown URL scheme", ["ingest", "nosuch://bucket/x"], "error"),
        Case("ingest a folder holding a FIFO named .png", ingest_folder(fifo("pipe.png")), "ok", timeout=60),
        Case("ingest an empty source argument", ["ingest", ""], "error"),
        Case("ingest file:// with no path", ["ingest", "file://"], "error"),
        Case("ingest --label-depth -1", ingest_folder(lambda src: _jpeg(src / "a" / "x.jpg"), "--label-depth", "-1"),
             "error"),
        # engagement files
        Case("engagement file missing", engagement(None), "error"),
        Case("engagement CSV without the event column", engagement("user_id,image_id,ts\nu1,{image},2025-01-01\n"),
             "error"),
        Case("engagement CSV with one unparseable ts", engagement(
            "user_id,image_id,event,ts\nu1,{image},click,2025-01-01T00:00:00Z\nu2,{image},click,yesterday\n"), "ok"),
        Case("engagement CSV that is empty", engagement(""), "error"),
        Case("engagement CSV of an unknown event kind", engagement(
            "user_id,image_id,event,ts\nu1,{image},purchase,2025-01-01T00:00:00Z\n"), "any"),
        Case("engagement file registered, then deleted", registered_then_deleted, "ok"),
        Case("engagement Parquet with ts of type Time", engagement(None, parquet_time_ts), "error"),
        Case("engagement file that is a FIFO", engagement(None, lambda scratch, image: (
            os.mkfifo(scratch / "fifo.csv"), scratch / "fifo.csv")[1]), "error", timeout=60),
        Case("engagement remove of an unregistered file", ["engagement", "remove", "/nonexistent.csv"], "error"),
        # corrupt state, then the command that reads it
        Case("champion safetensors truncated", corrupt_then(lambda h: _truncate(_champion_weights(h)),
                                                            "recommend", "{image}"), "error", says="safetensors"),
        Case("champion safetensors with 4 KiB flipped", corrupt_then(lambda h: _flip(_champion_weights(h)),
                                                                     "recommend", "{image}", "--json"), "error", says="safetensors"),
        Case("faiss.index truncated", corrupt_then(lambda h: _truncate(_index_file(h, "faiss.index")),
                                                   "recommend", "{image}"), "error", says="faiss.index"),
        Case("ids.parquet truncated", corrupt_then(lambda h: _truncate(_index_file(h, "ids.parquet")),
                                                   "recommend", "{image}"), "error", says="ids.parquet"),
        Case("index state.json truncated", corrupt_then(lambda h: _truncate(_index_file(h, "state.json")),
                                                        "recommend", "{image}"), "error", says="state.json"),
        Case("indexes/current.json names a missing generation", corrupt_then(
            lambda h: (h / "indexes" / "current.json").write_text('{"generation": "gone"}'), "recommend", "{image}"),
             "error", says="gone"),
        Case("raw_images partition truncated, then ingest", corrupt_then(
            lambda h: _truncate(_one(h / "lake" / "raw_images", "*.parquet")), "ingest", "demo"), "error", says="raw_images"),
        Case("raw_images partition truncated, then sql", corrupt_then(
            lambda h: _truncate(_one(h / "lake" / "raw_images", "*.parquet")), "sql",
            "SELECT count(*) FROM raw_images"), "error", says="raw_images"),
        Case("reports/latest.json truncated, then report", corrupt_then(
            lambda h: _truncate(h / "reports" / "latest.json"), "report"), "error", says="latest.json"),
        Case("champion pointer log garbled", corrupt_then(lambda h: [
            f.write_text("{not json") for f in (h / "models" / "reranker_champion" / "pointers").glob("*")],
            "recommend", "{image}"), "error", says="pointers"),
        Case("no index at all", corrupt_then(rm("indexes"), "recommend", "{image}"), "error"),
        Case("no reports at all", corrupt_then(rm("reports"), "report"), "error"),
        # lensless sql is read-only
        Case("sql COPY ... TO a file outside the lake", ["sql", f"COPY (SELECT 1) TO '{outside}'"], "error",
             _nothing_written_outside(outside)),
        Case("sql COPY ... TO a file inside the lake", lambda h, s: [
            "sql", f"COPY (SELECT 1 AS x) TO '{h / 'lake' / 'raw_images' / 'x.parquet'}'"], "error"),
        Case("sql ATTACH a new database", lambda h, s: ["sql", f"ATTACH '{s / 'new.db'}' AS n"], "error"),
        Case("sql read_text('/etc/shadow')", ["sql", "SELECT * FROM read_text('/etc/shadow')"], "error"),
        Case("sql INSTALL httpfs", ["sql", "INSTALL httpfs"], "error"),
        Case("sql DROP VIEW raw_images", ["sql", "DROP VIEW raw_images"], "error"),
        Case("sql with a syntax error", ["sql", "SELEC 1"], "error"),
        Case("sql a read", ["sql", "SELECT count(*) AS n FROM raw_images", "--json"], "ok"),
        Case("sql --json of an interval, a union and a NaN", ["sql", "SELECT max(ingested_at) - min(ingested_at) AS d, "
             "union_value(k := 1) AS u, 'NaN'::DOUBLE AS n FROM raw_images", "--json"], "ok", _strict_json),
        Case("sql --max-rows -1", ["sql", "SELECT 1", "--max-rows", "-1"], "error"),
        Case("sql a cross join of 4e10 rows, --timeout 1", ["sql", "SELECT sum(a.range * b.range) FROM range(200000) a, "
             "range(200000) b", "--timeout", "1"], "error", timeout=60, says="--timeout"),
        # the command line itself
        Case("a mistyped command", ["recomend", "x"], "error"),
        Case("no command", [], "ok"),
        Case("promote an unknown version", ["promote", "nosuchversion"], "error"),
        Case("submit an unknown job", ["submit", "no_such_job", "--no-wait"], "error"),
        Case("submit an unknown partition", ["submit", "ingest_job", "--partition", "nosuch", "--no-wait"], "error"),
        Case("submit a partition to an unpartitioned job", ["submit", "retrain_job", "--partition", "x", "--no-wait"],
             "error"),
        Case("LENSLESS_HOME is a file, then ingest", ingest_with_a_file_at(), "error", says="which is a file"),
        Case("DAGSTER_HOME is a file, then ingest", ingest_with_a_file_at("dagster"), "error", says="is a file"),
        Case("report on a home that has none", lambda h, s: (shutil.rmtree(h / "reports"), ["report"])[1], "error"),
    ]


def _strict_json(done: subprocess.CompletedProcess, home: Path) -> str | None:
    """None when the last line of stdout is JSON by the standard (no NaN or Infinity)."""
    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")
    try:
        json.loads(done.stdout.strip().splitlines()[-1], parse_constant=refuse)
    except (ValueError, IndexError) as e:
        return f"not JSON: {e}"
    return None


def classify(case: Case, done: subprocess.CompletedProcess | None, home: Path) -> tuple[str, str]:
    if done is None:
        return "hang", f"ran past {case.timeout:.0f}s"
    err = done.stderr.strip()
    last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    if "Traceback (most recent call last)" in err or "Stack Trace:" in err:  # Python's, or a failed Dagster step's
        return "traceback", last[:160]
    if done.returncode == 0 and case.expect == "error":
        return "wrong", "exit code 0 where it must fail"
    if done.returncode != 0 and case.expect == "ok":
        return "wrong", f"exit code {done.returncode}: {last[:160]}"
    if done.returncode == 0 and case.check is not None:
        wrong = case.check(done, home)
        if wrong:
            return "wrong", wrong
    if done.returncode and case.says and case.says not in last:
        return "unnamed", last[:160]
    return "clean", (last if done.returncode else "ok")[:160]


def build_home(root: Path) -> Path:
    home = root / "home"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN_GRAPH, str(DEMO_IMAGES), json.dumps(TINY)], cwd=ROOT,
                          env=env_for(home), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"building the home failed:\n{done.stderr[-3000:]}")
    print(f"home built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run the cases whose name contains one of these (comma-separated)")
    ap.add_argument("--json", action="store_true", help="last line: the result as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lensless-hostile-") as tmp:
        root = Path(tmp)
        base = build_home(root)
        rows = []
        wanted = [w for w in (args.only or "").split(",") if w]
        for i, case in enumerate(c for c in cases() if not wanted or any(w in c.name for w in wanted)):
            home, scratch = root / f"case{i}" / "home", root / f"case{i}" / "scratch"
            shutil.copytree(base, home, symlinks=True)
            scratch.mkdir(parents=True)
            started = time.perf_counter()
            try:
                argv = case.args(home, scratch) if callable(case.args) else case.args
            except Exception as e:  # the harness's own setup: say so, and go on
                outcome, detail, done = "setup", f"{type(e).__name__}: {e}", None
            else:
                try:
                    done = lensless(home, *argv, timeout=case.timeout)
                except subprocess.TimeoutExpired:
                    done = None
                outcome, detail = classify(case, done, home)
            rows.append({"case": case.name, "expect": case.expect, "rc": None if done is None else done.returncode,
                         "outcome": outcome, "seconds": round(time.perf_counter() - started, 1), "detail": detail})
            print(f"{outcome:9} {rows[-1]['seconds']:5.1f}s {case.name}: {detail}", file=sys.stderr, flush=True)
            shutil.rmtree(root / f"case{i}", ignore_errors=True)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("clean", "unnamed", "traceback", "wrong", "hang", "setup")}
    print("\n| case | expected | exit | outcome | what it said |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['expect']} | {r['rc']} | {r['outcome']} | {r['detail'].replace('|', '/')} |")
    print(f"\n{len(rows)} cases: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if args.json:
        print(json.dumps({"cases": rows, "counts": counts}))
    (Path(tempfile.gettempdir()) / "lensless-hostile-outside.csv").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
