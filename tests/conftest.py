"""Shared fixtures: every test that touches the lake gets its own temporary LENSLESS_HOME."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def lensless_home(tmp_path, monkeypatch):
    """A fresh LENSLESS_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("LENSLESS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("LENSLESS_WATCH", raising=False)
    return home
