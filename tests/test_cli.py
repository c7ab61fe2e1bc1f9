"""The real `storyboard` command: help, exit codes, --json, the lock, and kill -9."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main

from storyboard.cli import app

from helpers import cli, edit_plan

COMMANDS = ["run", "plan", "visual", "judge", "video", "render", "review", "batch", "status", "formats", "doctor"]


def test_every_command_is_documented_with_an_example() -> None:
    group = typer.main.get_command(app)
    assert set(COMMANDS) <= set(group.commands)
    for name, command in group.commands.items():
        assert command.help and "Example: storyboard" in command.help, name


@pytest.mark.parametrize("command", COMMANDS)
def test_help_runs(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0 and "Example" in result.stdout


def test_json_summary_is_the_only_stdout(run_copy: Path) -> None:
    result = cli("run", "--dir", str(run_copy), "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["status"] == "up to date" and data["calls"] == {}
    assert "up to date" not in result.stdout.replace('"up to date"', "")


def test_json_failure_carries_exit_code(tmp_path: Path) -> None:
    result = cli("run", "--idea", "x", "--format", "nope", "--out", str(tmp_path), "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)["exit_code"] == 2
    assert "valid formats: drama10, explainer5" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_why_names_the_field(run_copy: Path) -> None:
    edit_plan(run_copy, 7, line="Here it is, finally.")
    result = cli("status", str(run_copy), "--why")
    assert result.returncode == 0
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("07"))
    assert "stale (line)" in row


def test_doctor_reports_ok() -> None:
    result = cli("doctor")
    assert result.returncode == 0, result.stdout
    assert "ffmpeg" in result.stdout and "font" in result.stdout


def test_no_judge_skips_the_judge_stage(run_copy: Path) -> None:
    (run_copy / "judge.json").unlink()
    result = cli("run", "--dir", str(run_copy), "--no-judge", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "judge" not in summary["stages"] and "render" in summary["stages"]
    assert not (run_copy / "judge.json").exists()
