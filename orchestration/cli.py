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

This module is the parser and `main` (one writer per home, every error one line);
`orchestration/commands.py` holds what each command does.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from orchestration.commands import (
    cmd_demo,
    cmd_dev,
    cmd_engagement,
    cmd_ingest,
    cmd_promote,
    cmd_recommend,
    cmd_report,
    cmd_rollback,
    cmd_run,
    cmd_sql,
    cmd_submit,
    current_home,
)

WRITERS = {"ingest", "demo", "run", "promote", "rollback", "engagement"}  # commands that write the home



def _rows(text: str) -> int:
    """`--max-rows`: a whole number of rows from 1 to 100,000 (argparse names the flag when not)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= 100_000:
        raise argparse.ArgumentTypeError(f"{n} is out of range; valid: 1 to 100000")
    return n


def _seconds(text: str) -> float:
    """`--timeout`: a number of seconds above 0 (argparse names the flag when not)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is out of range; give seconds above 0")
    return seconds


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
    s.add_argument("--max-rows", type=_rows, default=40, help="rows printed as a table, 1 to 100000 (default 40)")
    s.add_argument("--timeout", type=_seconds, default=600.0,
                   help="stop the statement after this many seconds (default 600)")
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
    from orchestration import logs

    logs.BRIEF_FAILURES = not args.verbose  # a failed step's error, with Dagster's stack trace only with -v
    from assets.store.lock import writer_lock
    from assets.store.models import PointerMoved
    from orchestration.instance import dagster_home
    from orchestration.runner import StepFailed

    try:
        dagster_home()  # a DAGSTER_HOME that is a file: said before anything is staged
        if args.command in WRITERS:  # one writer at a time per home; the next one waits
            with writer_lock(current_home(), args.command):
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
