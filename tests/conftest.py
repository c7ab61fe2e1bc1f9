"""Shared fixtures: one real offline run per session, copied for each test that changes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from storyboard.pipeline import run
from storyboard.profiles import resolve_config

IDEA = "A cat who wants to be a judge"


@pytest.fixture(autouse=True)
def no_user_keys_file(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read the developer's own keys file."""
    monkeypatch.setenv("STORYBOARD_KEYS_FILE", str(tmp_path_factory.getbasetemp() / "no-keys.yaml"))


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished offline run of the 10-beat format (made once per session)."""
    out = tmp_path_factory.mktemp("runs")
    summary = run(idea=IDEA, out=out)
    assert summary.status == "ok", summary
    return Path(summary.run_dir)


@pytest.fixture
def run_copy(offline_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session run, under a path with a space, a quote, a colon, % and non-ASCII."""
    target = tmp_path / "my run's: 100% ünï dir" / offline_run.name
    shutil.copytree(offline_run, target)
    (target / ".lock.json").unlink(missing_ok=True)
    return target


@pytest.fixture
def config() -> dict:
    return resolve_config("offline")
