"""Real servers for the integration tests and `bench/scale.py`: PostgreSQL (Debian's packages)
and an S3-compatible server (`moto` in server mode), each on 127.0.0.1 on a free port, started
here and stopped by its process id.

`postgres_server()` yields the `DAGSTER_PG_*` variables that `deploy/dagster-postgres.yaml`
reads; `s3_server()` yields the `AWS_*` variables that s3fs (and so `LENSLESS_HOME=s3://...`)
reads, with the bucket `lensless` created. Both raise `ServerMissing` when the programs are
not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ServerMissing(RuntimeError):
    """The server's programs are not installed here."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: str, **kw) -> subprocess.Popen:
    """Start a server with its output in the file `log` (a pipe nobody reads would fill up
    and block the server)."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kw)


def _wait(ready, proc: subprocess.Popen, what: str, log: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                raise RuntimeError(f"{what} exited with code {proc.returncode}: {f.read()[-2000:]}")
        try:
            if ready():
                return
        except Exception:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{what} did not start in {timeout}s")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()


def _pg_bin() -> str:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    if not found:
        raise ServerMissing("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    return os.path.dirname(os.path.realpath(found))


@contextmanager
def postgres_server() -> Iterator[dict[str, str]]:
    """A throw-away PostgreSQL cluster with a `dagster` database; yields DAGSTER_PG_* variables.
    As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root)."""
    import psycopg2

    bin_dir = _pg_bin()
    user = "postgres" if os.geteuid() == 0 else None
    root = tempfile.mkdtemp(prefix="lensless-pg-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "data")
    if user:
        shutil.chown(root, user)
    port = free_port()
    subprocess.run([f"{bin_dir}/initdb", "-D", data, "-U", "lensless", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, user=user, cwd=root)
    log = os.path.join(root, "postgres.log")
    proc = _start([f"{bin_dir}/postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", root], log,
                  user=user, cwd=root)
    try:
        def connect(db):
            return psycopg2.connect(host="127.0.0.1", port=port, user="lensless", dbname=db)

        _wait(lambda: connect("postgres").close() or True, proc, "postgres", log)
        env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USER": "lensless",
               "DAGSTER_PG_PASSWORD": "unused-with-trust-auth", "DAGSTER_PG_DB": "dagster"}
        create_database(env, "dagster")
        yield env
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def create_database(env: dict[str, str], name: str) -> dict[str, str]:
    """Create the database `name` on the server of `env`; returns `env` pointing at it (one
    Dagster instance per database, one home per instance)."""
    import psycopg2

    con = psycopg2.connect(host=env["DAGSTER_PG_HOST"], port=env["DAGSTER_PG_PORT"], user=env["DAGSTER_PG_USER"],
                           dbname="postgres")
    try:
        con.autocommit = True
        con.cursor().execute(f'CREATE DATABASE "{name}"')
    finally:
        con.close()
    return {**env, "DAGSTER_PG_DB": name}


@contextmanager
def s3_server(bucket: str = "lensless") -> Iterator[dict[str, str]]:
    """moto's S3 server with `bucket` created; yields the AWS_* variables that point at it."""
    try:
        import moto.server  # noqa: F401
    except ImportError as e:
        raise ServerMissing("moto[server] is not installed (pip install 'moto[server]')") from e
    import boto3

    port = free_port()
    root = tempfile.mkdtemp(prefix="lensless-s3-")
    log = os.path.join(root, "moto.log")
    proc = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        _wait(lambda: client.list_buckets() is not None, proc, "moto server", log)
        client.create_bucket(Bucket=bucket)
        yield env
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)
