"""Shared fixtures. A test that touches the lake gets its own temporary home: `home` is passed
to the Dagster-free helpers and, as the `lensless_home` resource (`resources`), to assets
under `materialize`; `lensless_home` also exports it as LENSLESS_HOME for the command line
and the runner, which read the environment."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _no_inherited_dagster_home(monkeypatch):
    """`ensure_dagster_home` exports DAGSTER_HOME and respects one already set: drop it before
    and after each test, so no test reads the instance of another."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


@pytest.fixture
def home(tmp_path):
    """A fresh, empty home for one test (not exported to the environment)."""
    from assets.store.files import Home

    return Home.at(tmp_path / "home")


@pytest.fixture
def resources(home):
    """Dagster resources pointing the assets at `home`."""
    from assets.store.resource import LenslessHome

    return {"lensless_home": LenslessHome(path=str(home.root))}


@pytest.fixture
def lensless_home(home, monkeypatch):
    """`home`, exported as LENSLESS_HOME (and DAGSTER_HOME inside it) for CLI-level tests."""
    monkeypatch.setenv("LENSLESS_HOME", str(home.root))
    monkeypatch.setenv("DAGSTER_HOME", str(home.local_dir("dagster")))
    monkeypatch.delenv("LENSLESS_WATCH", raising=False)
    return home
