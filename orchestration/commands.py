"""What each `lensless` command does (`orchestration/cli.py` parses the command line and calls
these with the parsed arguments). Every command runs through Dagster on the persistent
instance in `$LENSLESS_HOME/dagster`, so what it does shows in the UI (`lensless dev`)
afterwards. Each returns the exit code; bad input or state raises ValueError (or another
error `cli.main` turns into one line, exit code 2).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading


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


def current_home():
    from assets.store.files import Home

    return Home.from_env()


def ensure_demo(n_images: int, size: int = 224, seed: int = 0) -> str:
    """Render the demo catalog into the home and register its engagement (idempotent; see
    `assets.ingestion.sources.render_demo`). Returns the folder, ingested like any source."""
    from assets.ingestion.sources import render_demo

    return render_demo(current_home(), n_images, size, seed, progress=_progress_bar("render demo"))


def cmd_ingest(args) -> int:
    from orchestration.pipeline import ingest

    source = ensure_demo(args.images) if args.source == "demo" else args.source
    summary = ingest(current_home(), source, args.engagement, args.label_depth)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"batch {summary['batch']}: ingested {summary['ingested']}, duplicates {summary['duplicates']}, "
              f"quarantined {summary['quarantined'] or 0}, skipped {summary['skipped']}")
    return 0


def _print_report(report: dict) -> None:
    from assets.evaluation.report import (
        champion_moved_line,
        decision_rows,
        promotion_line,
        provenance_line,
        reports_dir,
        summary_rows,
    )
    from assets.plots import md_table
    from assets.serving.recommend import serving_version

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
    moved = champion_moved_line(report, serving_version(current_home()))
    if moved:
        print(moved)
    print(f"report: {reports_dir(current_home()) / report['run_id'] / 'report.html'}")


def cmd_demo(args) -> int:
    from orchestration.pipeline import run_all

    report = run_all(current_home(), ensure_demo(args.images), force=args.force)
    _print_report(report)
    print(f"demo finished in {report['_seconds'] / 60:.1f} min")
    return 0


def cmd_run(args) -> int:
    from orchestration.pipeline import run_all

    report = run_all(current_home(), args.source, args.engagement, args.limit, force=args.force)
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

    report = latest_report(current_home())
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0


def cmd_recommend(args) -> int:
    from assets.serving.recommend import recommend, recommend_for_user, serving_version

    if (args.image is None) == (args.user is None):
        raise ValueError("give an image (IMAGE_PATH_OR_ID) or a user (--user USER_ID), not both and not neither")
    home = current_home()
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

    home = current_home()
    if args.action == "list":
        for path in registered_sources(home):
            print(path)
        return 0
    if not args.file:
        raise ValueError("`lensless engagement remove` needs the FILE to unregister (see `lensless engagement list`)")
    unregister_source(home, args.file)
    print(f"unregistered {args.file}; its events leave the lake at the next ingest or `lensless run`")
    return 0


def _record_champion(instance, reason: str) -> None:
    """Record a move of the champion made outside a run as an observation of `reranker_champion`
    on `instance` (opened before the move, so a move is never left unrecorded by an instance
    that cannot be opened), so the UI's asset page shows who serves and why."""
    import dagster as dg

    from assets.evaluation.promotion import CHAMPION
    from assets.store.models import pointers

    state = pointers(current_home(), CHAMPION)
    instance.report_runless_asset_event(dg.AssetObservation(
        asset_key=CHAMPION, metadata={"champion": state["current"], "decision": reason,
                                      "history_length": len(state["history"])}))


def cmd_promote(args) -> int:
    from assets.evaluation.promotion import promote
    from orchestration.instance import get_instance

    instance = get_instance()
    version = promote(current_home(), args.version)
    _record_champion(instance, f"promoted {version} by hand (lensless promote)")
    print(f"champion is now {version}")
    return 0


def cmd_rollback(args) -> int:
    from assets.evaluation.promotion import rollback
    from orchestration.instance import get_instance

    instance = get_instance()
    old, new = rollback(current_home())
    _record_champion(instance, f"rolled back from {old} to {new} by hand (lensless rollback)")
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


def _json_rows(result) -> list[dict]:
    """A DuckDB result as JSON-ready rows: values JSON has (NaN and infinities as null), the
    rest (dates, intervals, unions, blobs) as their text."""
    def plain(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return str(value)

    return [{n: plain(v) for n, v in zip(result.columns, row, strict=True)} for row in result.fetchall()]


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

    home = current_home()
    damaged: dict[str, str] = {}
    timed_out = threading.Event()
    timer = None
    try:
        if not args.write:
            check_read_only(args.query)
        con = connect(home, read_only=not args.write, damaged=damaged)

        def stop():
            timed_out.set()
            con.interrupt()

        timer = threading.Timer(args.timeout, stop)  # the statement runs in this thread
        timer.start()
        result = con.sql(args.query)
        for name, error in damaged.items():  # the query did not need them
            print(f"warning: table {name} left out: {error}", file=sys.stderr)
        if result is not None:  # a relation runs when it is read
            if args.json:
                print(json.dumps(_json_rows(result)))
            else:
                result.show(max_rows=args.max_rows)
    except duckdb.Error as e:
        if timed_out.is_set():
            raise ValueError(f"the statement ran longer than --timeout {args.timeout:g} s and was stopped") from e
        raise ValueError(_sql_error(e, home, damaged)) from e
    finally:
        if timer is not None:
            timer.cancel()
    return 0
