"""Shared fixtures: one real offline run per session, copied for each test that changes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from storyboard.keys import file_hash
from storyboard.pipeline import run
from storyboard.profiles import resolve_config

IDEA = "A cat who wants to be a judge"


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished offline run of the 10-beat format (made once per session)."""
    out = tmp_path_factory.mktemp("runs")
    summary = run(idea=IDEA, out=out)
    assert summary.status == "ok", summary
    return Path(summary.run_dir)


@pytest.fixture
def run_copy(offline_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session run, under a path with a space and a quote."""
    target = tmp_path / "my run's dir" / offline_run.name
    shutil.copytree(offline_run, target)
    (target / ".lock.json").unlink(missing_ok=True)
    return target


@pytest.fixture
def config() -> dict:
    return resolve_config("offline")


def media_hashes(root: Path) -> dict[str, str]:
    """Hash of every media artifact in a run directory, by relative path."""
    files = [*root.glob("beats/*.png"), *root.glob("audio/*.wav"), *root.glob("clips/*.mp4"), root / "final.mp4"]
    return {p.relative_to(root).as_posix(): file_hash(p) for p in files if p.is_file()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def edit_plan(root: Path, number: int, **fields: object) -> None:
    """Edit beat `number` of plan.json by hand, as a user would."""
    path = root / "plan.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    target = data["hook"] if number == 0 else data["beats"][number - 1]
    target.update(fields)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `storyboard` command in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "storyboard.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
