"""The `lensless` command line. Every command runs through Dagster on the persistent instance
in `$LENSLESS_HOME/dagster`, so what it does shows in the UI (`lensless dev`) afterwards.

    lensless demo [--images N]                  the whole graph on the demo catalog
    lensless run --source PATH_OR_URL [--engagement FILE] [--limit N]
    lensless ingest SOURCE [--engagement FILE] [--label-depth N] [--json]
    lensless recommend IMAGE_PATH_OR_ID [-k 10] [--json]
    lensless recommend --user USER_ID [-k 10] [--json]
    lensless report | promote [VERSION] | rollback
    lensless dev [--port P] [--host H]
    lensless sql "SELECT …"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence

log = logging.getLogger("lensless")
WRITERS = {"ingest", "demo", "run", "promote", "rollback", "engagement"}  # commands that write the home


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr, disable=None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _home():
    from assets.store.files import Home

    return Home.from_env()


def ensure_demo(n_images: int, size: int = 224, seed: int = 0) -> str:
    """Render the demo catalog into the home and register its engagement (idempotent; see
    `assets.ingestion.sources.render_demo`). Returns the folder, ingested like any source."""
    from assets.ingestion.sources import render_demo

    return render_demo(_home(), n_images, size, seed, progress=_progress_bar("render demo"))


def cmd_ingest(args) -> int:
    from orchestration.pipeline import ingest

    source = ensure_demo(args.images) if args.source == "demo" else args.source
    summary = ingest(_home(), source, args.engagement, args.label_depth)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"batch {summary['batch']}: ingested {summary['ingested']}, duplicates {summary['duplicates']}, "
              f"quarantined {summary['quarantined'] or 0}, skipped {summary['skipped']}")
    return 0


def _print_report(report: dict) -> None:
    from assets.evaluation.report import (
        decision_rows,
        promotion_line,
        provenance_line,
        reports_dir,
        summary_rows,
    )
    from assets.plots import md_table

    print("Related images\n")
    print(md_table(summary_rows(report)))
    print(f"\n{report['dataset']['queries']} queries, {report['dataset']['images']} images; "
          "ms/1k: median [range] of interleaved repeats\n")
    print(md_table(decision_rows(report)))
    users = report.get("user_task")
    if users is not None:
        print(f"\nFor a user ({users['users']} test users, history of {users['history_length']} images; "
              f"the full VLM reads the latest {users['full_vlm_history']})\n")
        print(md_table(summary_rows(users)))
        print()
        print(md_table(decision_rows(users)))
    print(provenance_line(report))
    print(report["_promotion"] if "_promotion" in report else promotion_line(report))
    print(f"report: {reports_dir(_home()) / report['run_id'] / 'report.html'}")


def cmd_demo(args) -> int:
    from orchestration.pipeline import run_all

    report = run_all(_home(), ensure_demo(args.images), force=args.force)
    _print_report(report)
    print(f"demo finished in {report['_seconds'] / 60:.1f} min")
    return 0


def cmd_run(args) -> int:
    from orchestration.pipeline import run_all

    report = run_all(_home(), args.source, args.engagement, args.limit, force=args.force)
    _print_report(report)
    return 0


def cmd_submit(args) -> int:
    from orchestration.submit import follow, submit_job

    run_id = submit_job(args.job, args.partition)
    print(f"submitted {args.job}: run {run_id}", file=sys.stderr)
    if args.no_wait:
        print(run_id)
        return 0
    status = follow(run_id)
    print(f"run {run_id}: {status.value}")
    return 0 if status.value == "SUCCESS" else 1


def cmd_report(args) -> int:
    from assets.evaluation.report import latest_report

    report = latest_report(_home())
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0


def cmd_recommend(args) -> int:
    from assets.serving.recommend import recommend, recommend_for_user, serving_version

    if (args.image is None) == (args.user is None):
        raise ValueError("give an image (IMAGE_PATH_OR_ID) or a user (--user USER_ID), not both and not neither")
    home = _home()
    champion = serving_version(home)
    rerank = not args.no_rerank and champion is not None
    if args.user is not None:
        results = recommend_for_user(home, args.user, k=args.k, rerank=rerank, version=champion)
    else:
        results = recommend(home, args.image, k=args.k, rerank=rerank, version=champion)
    if args.no_rerank:
        order = "retrieval order (--no-rerank)"
    elif champion is None:
        order = "retrieval order: no champion reranker yet (one is promoted past the challenger_not_worse check, or by `lensless promote`)"
    else:
        order = f"reranked by champion {champion}"
    print(order, file=sys.stderr)
    if args.json:
        print(json.dumps(results))
    else:
        for i, r in enumerate(results, 1):
            print(f"{i:3d}  {r['score']:+.4f}  {r['image_id']}  {r['uri']}")
    return 0


def cmd_engagement(args) -> int:
    from assets.ingestion.engagement import registered_sources, unregister_source

    home = _home()
    if args.action == "list":
        for path in registered_sources(home):
            print(path)
        return 0
    if not args.file:
        raise ValueError("`lensless engagement remove` needs the FILE to unregister (see `lensless engagement list`)")
    unregister_source(home, args.file)
    print(f"unregistered {args.file}; its events leave the lake at the next ingest or `lensless run`")
    return 0


def _record_champion(reason: str) -> None:
    """Record a move of the champion made outside a run as an observation of `reranker_champion`,
    so the UI's asset page shows who serves and why."""
    import dagster as dg

    from assets.evaluation.promotion import CHAMPION
    from assets.store.models import pointers
    from orchestration.instance import get_instance

    state = pointers(_home(), CHAMPION)
    get_instance().report_runless_asset_event(dg.AssetObservation(
        asset_key=CHAMPION, metadata={"champion": state["current"], "decision": reason,
                                      "history_length": len(state["history"])}))


def cmd_promote(args) -> int:
    from assets.evaluation.promotion import promote

    version = promote(_home(), args.version)
    _record_champion(f"promoted {version} by hand (lensless promote)")
    print(f"champion is now {version}")
    return 0


def cmd_rollback(args) -> int:
    from assets.evaluation.promotion import rollback

    old, new = rollback(_home())
    _record_champion(f"rolled back from {old} to {new} by hand (lensless rollback)")
    print(f"champion rolled back {old} → {new}")
    return 0


def cmd_dev(args) -> int:
    """The daemon (schedules, sensors, automation, the run queue, run monitoring) and the UI
    behind a Host check (`orchestration/webserver.py`), both with this interpreter, so
    `.venv/bin/lensless dev` works without an activated venv; Ctrl-C stops both."""
    import signal
    import subprocess

    from orchestration.instance import ensure_dagster_home, get_instance

    home = ensure_dagster_home()
    get_instance()  # create the instance's databases here, once, before two processes open it
    target = ["-w", "workspace.yaml"] if os.path.exists("workspace.yaml") else ["-m", "orchestration.definitions"]
    print(f"DAGSTER_HOME={home}; UI on http://{args.host}:{args.port}", file=sys.stderr)
    daemon = subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", *target])
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill stops the daemon too
    try:
        ui = [sys.executable, "-m", "orchestration.webserver", *(target if target[0] == "-w" else [])]
        return subprocess.call([*ui, "-h", args.host, "-p", str(args.port)])
    except KeyboardInterrupt:
        return 130
    finally:
        daemon.send_signal(signal.SIGINT)  # what Ctrl-C sends it from a terminal: a clean stop
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()


def _sql_error(e: Exception, home, damaged: dict[str, str]) -> str:
    """One line for a failed `lensless sql`: DuckDB's first line, then what to do about it."""
    from assets.store.lake import TABLES, has_table

    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    hit = [name for name in damaged if f'"{name}"' in first or f" {name} " in f" {first} "]
    if hit:  # the query needs a table left out because one of its files is unreadable
        first = damaged[hit[0]]
    if home.path("lake").as_posix() in first:  # a lake file DuckDB could not read
        return f"{first}: rematerialise the asset that writes it, or restore the file"
    tables = [name for name in TABLES if has_table(home, name) and name not in damaged]
    return f"{first} (tables: {', '.join(tables) or 'none yet: ingest something first'})"


def cmd_sql(args) -> int:
    import duckdb

    from assets.store.query import check_read_only, connect

    home = _home()
    damaged: dict[str, str] = {}
    try:
        if not args.write:
            check_read_only(args.query)
        result = connect(home, read_only=not args.write, damaged=damaged).sql(args.query)
    except duckdb.Error as e:
        raise ValueError(_sql_error(e, home, damaged)) from e
    for name, error in damaged.items():  # the query did not need them
        print(f"warning: table {name} left out: {error}", file=sys.stderr)
    if result is None:
        return 0
    if args.json:
        print(json.dumps(result.pl().to_dicts(), default=str))
    else:
        result.show(max_rows=args.max_rows)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lensless")
    except PackageNotFoundError:
        return "(not installed)"


FORCE_HELP = "rematerialise every step, also those up to date (same code, inputs and settings as last time)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lensless", description="Visual recommender with a gutted Qwen3-VL.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error")
    p.add_argument("--version", action="version", version=f"lensless {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ingest", help="ingest a folder, fsspec URL or 'demo' as a new batch")
    s.add_argument("source", help="folder, URL (s3://…, memory://…) or 'demo'")
    s.add_argument("--engagement", help="Parquet/CSV engagement file (user_id, image_uri|image_id, event, ts)")
    s.add_argument("--label-depth", type=int, default=1, help="subfolder level that names the label (0: none)")
    s.add_argument("--images", type=int, default=5000, help="demo only: catalog size")
    s.add_argument("--json", action="store_true", help="last line is a JSON summary")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("engagement", help="list or unregister the engagement files the lake reads")
    s.add_argument("action", choices=["list", "remove"], help="list the registered files, or remove one")
    s.add_argument("file", nargs="?", help="remove: the file, as `list` prints it")
    s.set_defaults(func=cmd_engagement)

    s = sub.add_parser("demo", help="ingest the demo catalog and run the whole graph; prints the report")
    s.add_argument("--images", type=int, default=5000, help="demo catalog size (default 5000)")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("run", help="the whole graph on any folder or bucket")
    s.add_argument("--source", required=True, help="folder or fsspec URL; subfolders name labels")
    s.add_argument("--engagement", help="Parquet/CSV engagement file")
    s.add_argument("--limit", type=int, help="ingest a deterministic sample of N new files")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("submit", help="submit a job to the instance's run queue (daemon, run launcher, executor) "
                                      "and follow it; needs a daemon: `lensless dev` or dagster-daemon")
    s.add_argument("job", help="a job of orchestration/jobs.py, e.g. retrain_job, train_job or evaluation_job")
    s.add_argument("--partition", help="the batch, for ingest_job and embed_job")
    s.add_argument("--no-wait", action="store_true", help="print the run id and return at once")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("report", help="print the latest evaluation summary")
    s.add_argument("--json", action="store_true", help="print report.json instead of the summary")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("recommend", help="recommendations for a catalog image_id, any image file, or a user")
    s.add_argument("image", nargs="?", help="image_id from the catalog, or a path/URL of an image file")
    s.add_argument("--user", metavar="USER_ID", help="recommend for a user, from their engagement history")
    s.add_argument("-k", type=int, default=10, help="how many recommendations (default 10)")
    s.add_argument("--no-rerank", action="store_true", help="index order only")
    s.add_argument("--json", action="store_true", help="last line is a JSON list of {image_id, uri, score}")
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser("promote", help="make a gutted reranker version the champion (default: the latest)")
    s.add_argument("version", nargs="?", help="a version `lensless report` or the UI lists (default: the latest)")
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser("rollback", help="restore the previous champion")
    s.set_defaults(func=cmd_rollback)

    s = sub.add_parser("dev", help="start the Dagster UI and daemon on this project's instance")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; see README before exposing)")
    s.add_argument("--port", type=int, default=3000, help="UI port (default 3000)")
    s.set_defaults(func=cmd_dev)

    s = sub.add_parser("sql", help="query the lake with DuckDB; every table asset is a view")
    s.add_argument("query", help="one SQL statement, e.g. \"SELECT label, count(*) FROM raw_images GROUP BY 1\"")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.add_argument("--max-rows", type=int, default=40, help="rows printed as a table (default 40)")
    s.add_argument("--write", action="store_true",
                   help="allow statements that write (COPY, CREATE, ATTACH, ...) and files outside the lake")
    s.set_defaults(func=cmd_sql)
    p.commands = list(sub.choices)  # for `did you mean` in main()
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lensless` console script."""
    import difflib

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        return 0
    commands = parser.commands
    if not argv[0].startswith("-") and argv[0] not in commands:
        close = difflib.get_close_matches(argv[0], commands, n=1)
        hint = f"did you mean `lensless {close[0]}`?" if close else f"commands: {', '.join(commands)}"
        print(f"lensless: unknown command {argv[0]!r}; {hint}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    for chatter in ("alembic", "botocore", "aiobotocore"):  # instance migrations, credential lookups
        logging.getLogger(chatter).setLevel(logging.WARNING)
    if not args.verbose:  # training progress reaches the terminal once, through Dagster's log
        logging.getLogger("models").setLevel(logging.WARNING)
    from assets.store.lock import writer_lock
    from assets.store.models import PointerMoved
    from orchestration.runner import StepFailed

    try:
        if args.command in WRITERS:  # one writer at a time per home; the next one waits
            with writer_lock(_home(), args.command):
                return args.func(args)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"lensless {args.command}: interrupted; run the same command again to resume "
              "(finished steps are kept)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError, StepFailed, PointerMoved) as e:  # bad input or state: say which
        if args.verbose:
            traceback.print_exc()
        message = str(e).strip('"') or type(e).__name__
        if isinstance(e, StepFailed) and args.command in ("demo", "run"):
            message += f"; `lensless {args.command}` again resumes there (steps up to date are skipped)"
        print(f"lensless {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or a broken environment: one line, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"lensless {args.command}: error: {type(e).__name__}: {first} (rerun with -v for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
