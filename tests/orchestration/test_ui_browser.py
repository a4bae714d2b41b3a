"""End to end: `dagster dev` on a free loopback port, a materialisation launched through the
GraphQL API and polled to success, then the asset graph page in headless Chromium.

Needs Debian's chromium (`.ci/run` installs it); skipped with a reason when it is absent,
except under LENSLESS_REQUIRE_BROWSER=1 (CI), where its absence fails collection.
The screenshot is kept in `test-artifacts/asset_graph.png`.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI (LENSLESS_REQUIRE_BROWSER=1, set by .ci/run) fails without chromium instead of skipping
if CHROMIUM is None and os.environ.get("LENSLESS_REQUIRE_BROWSER") == "1":
    raise RuntimeError("LENSLESS_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"dagster dev not healthy on port {port} after {timeout}s")


def finished_status(client, run_id: str, timeout: float = 240) -> str | None:
    """The run's status once it has ended (None when it has not after `timeout` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(2)
    return None


def chromium(*args: str, timeout: float = 120) -> str:
    with_profile = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={os.environ['CHROME_PROFILE']}", *args]
    return subprocess.run(with_profile, capture_output=True, text=True, timeout=timeout).stdout


@pytest.fixture
def dagster_dev(tmp_path, monkeypatch):
    home = tmp_path / "home"
    env = {**os.environ, "LENSLESS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    monkeypatch.setenv("LENSLESS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("CHROME_PROFILE", str(tmp_path / "chrome"))
    from orchestration.instance import ensure_dagster_home

    ensure_dagster_home()
    port = free_port()
    log = open(tmp_path / "dagster_dev.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(port, proc)
        yield port
    finally:
        # Ctrl-C to `dagster dev`, which stops its webserver, daemon and code servers in 2-3 s,
        # but after a run re-executed from the UI sometimes waits 30 s and more (with SIGTERM to
        # the group too): what is left after 10 s is killed
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # unless the whole group has exited
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_ui_materialise_and_asset_graph(dagster_dev, tmp_path):
    from dagster import DagsterInstance
    from dagster_graphql import DagsterGraphQLClient

    from assets.ingestion.sources import list_source, new_entries, register_batch
    from assets.store.files import Home
    from orchestration.definitions import defs

    port = dagster_dev
    src = tmp_path / "src" / "shapes"
    src.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((48, 48, 3), 50 * i, np.uint8)).save(src / f"{i}.png")
    home = Home.from_env()  # the fixture's, which the webserver was started with
    batch = register_batch(home, new_entries(home, list_source(str(tmp_path / "src"))))
    DagsterInstance.get().add_dynamic_partitions("image_batches", [batch])

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution(
        "ingest_job", tags={"dagster/partition": batch},
        run_config={"ops": {"raw_images": {"config": {"size": 32}}}},
        asset_selection=["raw_images"])
    status = finished_status(client, run_id)
    assert status == "SUCCESS", f"run {run_id} ended {status}"

    # The global lineage collapses groups; each group's page draws its assets by name.
    graph = defs.resolve_asset_graph()
    groups: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for group, names in sorted(groups.items()):
        url = f"http://127.0.0.1:{port}/locations/lensless/asset-groups/{group}"
        dom = chromium("--virtual-time-budget=20000", "--dump-dom", url)
        missing = [n for n in names if n not in dom]
        assert not missing, f"asset graph of group {group} lacks {missing}"
        shot = artifacts / f"asset_graph_{group}.png"
        chromium("--virtual-time-budget=20000", "--window-size=1600,1000", f"--screenshot={shot}", url)
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {group}"


def test_report_and_its_asset_page_show_the_verdict_the_plot_and_the_systems(dagster_dev, tmp_path):
    """A small pipeline run, then report.html and the `evaluation_report` asset page as a
    browser renders them: the decision's verdict line, the quality-against-cost plot with its
    Pareto front, and the systems table. Screenshots go to `test-artifacts/`."""
    import re

    from assets.evaluation.report import latest_dir
    from assets.store.files import Home
    from orchestration.commands import ensure_demo
    from orchestration.pipeline import run_all
    from tests.orchestration.test_pipeline_end_to_end import DEMO_IMAGES, TINY

    port = dagster_dev
    home = Home.from_env()  # the fixture's, which the webserver serves
    report = run_all(home, ensure_demo(DEMO_IMAGES), run_config=TINY)
    page = latest_dir(home) / "report.html"
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)

    dom = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    verdict = re.search(r"<td>gutted vs retrieval</td><td>[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]</td>"
                        r"<td>[^<]+</td><td>(better|worse|no significant difference)</td>", dom)
    assert verdict, "report.html has no verdict line for gutted vs retrieval"
    assert dom.index("Related images: decision") < dom.index('alt="Quality against cost"')
    assert re.search(r'<img alt="Quality against cost" src="data:image/png;base64,[A-Za-z0-9+/=]{2000,}"', dom)
    systems = dom[dom.index("<h3>Systems</h3>"):]
    assert all(f"<td>{name}</td>" in systems for name in ("random", "popularity", "retrieval", "gutted", "full_vlm"))
    assert f"Dagster run {report['run_id']}" in dom and 'id="provenance"' in dom
    top = artifacts / "report_top.png"
    chromium("--virtual-time-budget=5000", "--window-size=1280,1000", f"--screenshot={top}", page.as_uri())
    assert top.exists() and top.stat().st_size > 20_000, "no screenshot of report.html"

    url = f"http://127.0.0.1:{port}/assets/evaluation_report"
    dom = chromium("--virtual-time-budget=30000", "--dump-dom", url)
    for text in ("gutted vs retrieval", "retrieval_ndcg_diff_ci_low", "plot_quality_against_cost", "systems",
                 "provenance"):
        assert text in dom, f"the evaluation_report asset page lacks {text!r}"
    shot = artifacts / "evaluation_report_asset.png"
    chromium("--virtual-time-budget=30000", "--window-size=1600,1400", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 20_000, "no screenshot of the asset page"


REEXECUTE = """
mutation Reexecute($parentRunId: String!) {
  launchPipelineReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: ALL_STEPS}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { jobName repositoryOrigin { repositoryLocationName repositoryName } }
  }
}"""


def test_a_command_line_run_is_reexecuted_from_the_ui(dagster_dev, tmp_path):
    """`lensless ingest` runs in the command's process; the webserver still finds its job in
    the code location, and re-executes it as the run page's "Re-execute" button asks."""
    from dagster import DagsterInstance
    from dagster_graphql import DagsterGraphQLClient

    from assets.store.files import Home
    from orchestration.pipeline import ingest

    src = tmp_path / "src" / "shapes"
    src.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 70 * i, np.uint8)).save(src / f"{i}.png")
    ingest(Home.from_env(), str(tmp_path / "src"))
    (parent,) = [r for r in DagsterInstance.get().get_runs() if r.job_name == "ingest_job"]

    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev)
    origin = client._execute(RUN, {"runId": parent.run_id})["runOrError"]
    assert origin == {"jobName": "ingest_job",
                      "repositoryOrigin": {"repositoryLocationName": "lensless", "repositoryName": "__repository__"}}
    launched = client._execute(REEXECUTE, {"parentRunId": parent.run_id})["launchPipelineReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = finished_status(client, run_id)
    assert status == "SUCCESS", f"re-execution {run_id} of {parent.run_id} ended {status}"
    child = DagsterInstance.get().get_run_by_id(run_id)
    assert child.parent_run_id == parent.run_id and child.tags["dagster/partition"] == parent.tags["dagster/partition"]
