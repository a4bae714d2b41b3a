"""Bad input at the command line, on a home with nothing trained: one line naming the problem
and exit code 2, or a clean success where success is right. The cases of bench/hostile.py that
need no trained home; those that damage a trained home's state are in
test_pipeline_end_to_end.py (`test_damaged_state_is_a_one_line_error_naming_it`)."""

import json

import numpy as np
import pytest
from PIL import Image


def _exit_code(args: list[str]) -> int:
    """`lensless ARGS` in this process; argparse's own errors exit (with its usage lines first)."""
    from orchestration.cli import main

    try:
        return main(args)
    except SystemExit as e:
        return e.code


def _one_line_error(capsys) -> str:
    """The line naming the problem that the failed command printed last on stderr (no traceback)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and "Traceback" not in "\n".join(lines), lines
    assert lines[-1].startswith("lensless "), lines
    return lines[-1]


@pytest.mark.parametrize(("args", "says"), [
    (["recommend", "img", "-k", "0"], "k must be >= 1, got 0"),
    (["recommend", "img", "-k", "-5"], "k must be >= 1, got -5"),
    (["recommend", "img", "-k", "abc"], "argument -k: invalid int value: 'abc'"),
    (["recommend"], "give an image (IMAGE_PATH_OR_ID) or a user (--user USER_ID)"),
    (["recommend", "/tmp"], "no FAISS index yet"),  # checked before the input is read
    (["ingest", "nosuch://bucket/x"], "Protocol not known: nosuch"),
    (["ingest", "http://127.0.0.1:9/images/"], "holds no files"),
    (["ingest", "ftp://127.0.0.1:9/images/"], "source 'ftp://127.0.0.1:9/images/' could not be listed"),
    (["sql", "SELEC 1"], "syntax error"),
    (["submit", "no_such_job", "--no-wait"], "unknown job 'no_such_job'; valid: "),
    (["submit", "retrain_job", "--partition", "x", "--no-wait"], "job retrain_job is not partitioned"),
    (["submit", "ingest_job", "--no-wait"], "job ingest_job needs --partition; known: (none yet"),
    (["submit", "embed_job", "--partition", "nosuch", "--no-wait"], "unknown image_batches partition 'nosuch'"),
    (["report"], "no report yet in"),
])
def test_bad_input_is_one_line_naming_it(lensless_home, capsys, args, says):
    assert _exit_code(args) == 2
    assert says in _one_line_error(capsys)


def test_a_missing_engagement_file_is_named_and_nothing_is_ingested(lensless_home, tmp_path, capsys):
    from assets.store.lake import read_table
    from orchestration.cli import main

    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(src / "x.jpg")
    missing = tmp_path / "events.csv"
    assert main(["ingest", str(tmp_path / "src"), "--engagement", str(missing)]) == 2
    assert str(missing) in _one_line_error(capsys)
    assert read_table(lensless_home, "raw_images").is_empty()


def test_odd_file_names_and_a_folder_of_non_images_are_ingested_or_skipped_with_a_reason(
        lensless_home, tmp_path, capsys):
    from assets.store.lake import read_table
    from orchestration.cli import main

    odd = tmp_path / "odd" / "things"
    odd.mkdir(parents=True)
    names = ("sp ace.jpg", "ünï©ødé.jpg", "new\nline.jpg", "-dash.jpg", ".hidden.jpg")
    for i, name in enumerate(names):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(odd / name)
    assert main(["ingest", str(tmp_path / "odd"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["ingested"], summary["skipped"]) == (4, 1)
    assert sorted(read_table(lensless_home, "raw_images")["uri"]) == sorted(str(odd / n) for n in names[:4])
    assert read_table(lensless_home, "skipped")["reason"].to_list() == ["hidden_file"]

    text = tmp_path / "text"
    text.mkdir()
    (text / "README.txt").write_text("not an image")
    assert main(["ingest", str(text), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["ingested"], summary["skipped"]) == (0, 1)
    assert "unsupported_extension:.txt" in read_table(lensless_home, "skipped")["reason"].to_list()


def test_a_missing_source_is_refused_and_not_watched(lensless_home, tmp_path, capsys):
    from assets.ingestion.sources import watched_sources

    missing = tmp_path / "missing"
    assert _exit_code(["ingest", str(missing)]) == 2
    assert str(missing) in _one_line_error(capsys)
    assert not any("missing" in source for source in watched_sources(lensless_home))


def test_sql_writes_only_when_asked(lensless_home, tmp_path, capsys):
    out = tmp_path / "out.csv"
    statement = f"COPY (SELECT 42 AS x) TO '{out}'"
    assert _exit_code(["sql", statement]) == 2
    assert "lensless sql only reads" in _one_line_error(capsys) and not out.exists()
    assert _exit_code(["sql", "--write", statement]) == 0
    assert out.read_text().split() == ["x", "42"]


def test_sql_json_writes_every_type_as_json_and_rows_must_be_a_count(lensless_home, capsys):
    import json

    query = ("SELECT INTERVAL 3 DAY AS d, 'NaN'::DOUBLE AS n, union_value(k := 1) AS u, [1.5, 'inf'::DOUBLE] AS l, "
             "{'a': DATE '2026-01-02'} AS s")
    assert _exit_code(["sql", query, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(out) == [{"d": "3 days, 0:00:00", "n": None, "u": 1, "l": [1.5, None], "s": {"a": "2026-01-02"}}]
    for bad in ("-1", "0", "1e3", "99999999999999999999"):
        assert _exit_code(["sql", "SELECT 1", "--max-rows", bad]) == 2
        assert "--max-rows" in capsys.readouterr().err


def test_a_long_sql_statement_is_stopped_at_its_timeout(lensless_home, capsys):
    import time

    t0 = time.perf_counter()
    assert _exit_code(["sql", "SELECT sum(a.range * b.range) FROM range(2000000) a, range(2000000) b",
                       "--timeout", "0.5"]) == 2  # fmt: skip
    assert "ran longer than --timeout 0.5 s and was stopped" in _one_line_error(capsys)
    assert time.perf_counter() - t0 < 60  # 4e12 products: hours, had it not been stopped
    assert _exit_code(["sql", "SELECT 42 AS x", "--timeout", "30", "--json"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == '[{"x": 42}]'
    for bad in ("0", "-1", "nan", "inf", "soon"):
        assert _exit_code(["sql", "SELECT 1", "--timeout", bad]) == 2
        assert "--timeout" in capsys.readouterr().err


def test_a_failed_step_shows_its_error_without_dagsters_stack_trace_unless_verbose(lensless_home, tmp_path, capsys):
    import polars as pl

    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(src / "x.png")
    events = tmp_path / "events.parquet"
    pl.DataFrame({"user_id": ["u"], "image_uri": [str(src / "x.png")], "event": ["click"],
                  "ts": ["2026-01-01T00:00:00Z"]}).write_parquet(events)
    assert _exit_code(["ingest", str(tmp_path / "src"), "--engagement", str(events)]) == 0
    events.write_bytes(events.read_bytes()[:100])  # the next ingest's engagement step fails reading it
    capsys.readouterr()
    assert _exit_code(["ingest", str(tmp_path / "src")]) == 2
    err = capsys.readouterr().err
    assert "Stack Trace:" not in err and "rerun with -v for the stack trace" in err
    assert f"engagement file '{events}' cannot be read" in err.strip().splitlines()[-1]
    assert _exit_code(["-v", "ingest", str(tmp_path / "src")]) == 2
    assert "Stack Trace:" in capsys.readouterr().err


@pytest.mark.parametrize("variable", ["LENSLESS_HOME", "DAGSTER_HOME"])
def test_a_home_that_is_a_file_is_named_before_anything_is_written(tmp_path, monkeypatch, capsys, variable):
    (tmp_path / "a_file").write_text("not a folder")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), "red").save(images / "one.png")
    monkeypatch.setenv("LENSLESS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(variable, str(tmp_path / "a_file" / "below"))
    assert _exit_code(["ingest", str(images)]) == 2
    assert f"{variable} {tmp_path / 'a_file' / 'below'} lies under {tmp_path / 'a_file'}, which is a file" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "images"]  # no home, no instance, no batch
    monkeypatch.setenv(variable, str(tmp_path / "a_file"))
    assert _exit_code(["report"]) == 2
    assert f"{variable} {tmp_path / 'a_file'} is a file: point it at a folder" in _one_line_error(capsys)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.setenv(variable, str(tmp_path / "dangling"))
    assert _exit_code(["report"]) == 2
    assert f"{variable} {tmp_path / 'dangling'} is a link to nothing" in _one_line_error(capsys)


def test_a_file_where_the_default_instance_folder_goes_is_named(tmp_path, monkeypatch, capsys):
    """Without DAGSTER_HOME the instance lives in `<home>/dagster`: a file there is named too."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster").write_text("not a folder")
    monkeypatch.setenv("LENSLESS_HOME", str(home))
    assert _exit_code(["report"]) == 2
    assert f"the Dagster instance folder {home / 'dagster'} is a file" in _one_line_error(capsys)


def test_a_promote_or_rollback_the_instance_refuses_moves_nothing(lensless_home, tmp_path, monkeypatch, capsys):
    """The move is recorded on the Dagster instance; one that cannot be opened (here: it
    serves another home) stops the command before the champion moves."""
    from assets.evaluation.promotion import CHALLENGER
    from assets.store.models import kind_root, pointers
    from orchestration.cli import main
    from orchestration.instance import get_instance

    for version in ("A", "B"):
        (kind_root(lensless_home, CHALLENGER) / version).mkdir(parents=True)
    assert main(["promote", "A"]) == 0 and main(["promote", "B"]) == 0
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "shared-instance"))
    monkeypatch.setenv("LENSLESS_HOME", str(tmp_path / "another"))
    get_instance()  # the shared instance now serves another home
    monkeypatch.setenv("LENSLESS_HOME", str(lensless_home.root))
    capsys.readouterr()
    assert main(["promote", "A"]) == 2 and main(["rollback"]) == 2
    assert pointers(lensless_home, "reranker_champion")["current"] == "B"
    assert capsys.readouterr().err.count("serves LENSLESS_HOME=") == 2


def test_a_bad_run_limit_is_named_in_one_line(lensless_home, monkeypatch, capsys):
    from orchestration.cli import main

    monkeypatch.setenv("LENSLESS_MAX_CONCURRENT_RUNS", "two")
    assert main(["promote"]) == 2  # opens the instance first
    err = capsys.readouterr().err
    assert "LENSLESS_MAX_CONCURRENT_RUNS='two': expected a positive integer" in err and "Traceback" not in err
    assert not (lensless_home.local_dir("dagster") / "dagster.yaml").exists()  # nothing half-written


def test_a_bad_limit_registers_no_engagement_file(lensless_home, tmp_path, capsys):
    from assets.ingestion.engagement import registered_sources
    from orchestration.pipeline import ingest

    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(src / "x.jpg")
    events = tmp_path / "events.csv"
    events.write_text("user_id,image_uri,event,ts\nu1,x.jpg,click,2026-01-01T00:00:00Z\n")
    with pytest.raises(ValueError, match="--limit must be >= 1, got 0"):
        ingest(lensless_home, str(tmp_path / "src"), str(events), limit=0)
    assert registered_sources(lensless_home) == []
