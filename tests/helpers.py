"""Helpers shared by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from storyboard.keys import file_hash


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
