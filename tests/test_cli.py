"""The real `storyboard` command: help, exit codes, --json, the lock, and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main

from storyboard.cli import app
from storyboard.media import probe

from helpers import cli, edit_plan, media_hashes

COMMANDS = ["run", "plan", "visual", "judge", "video", "render", "status", "formats", "doctor"]


def test_every_command_is_documented_with_an_example() -> None:
    group = typer.main.get_command(app)
    assert set(COMMANDS) <= set(group.commands)
    for name, command in group.commands.items():
        assert command.help and "Example: storyboard" in command.help, name


@pytest.mark.parametrize("command", COMMANDS)
def test_help_runs(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0 and "Example" in result.stdout


@pytest.mark.parametrize(("value", "message"), [("0,99", "no beat 99; valid beats are 0-10"), ("x", "'x' is not a beat number"), ("-1", "valid beats are 0-10")])
def test_bad_regen_beats_exit_2_naming_valid_beats(run_copy: Path, value: str, message: str) -> None:
    before = media_hashes(run_copy)
    result = cli("run", "--dir", str(run_copy), f"--regen-beats={value}")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert media_hashes(run_copy) == before


def test_bad_only_beat_exits_2(run_copy: Path) -> None:
    result = cli("visual", str(run_copy), "--only-beat", "-1")
    assert result.returncode == 2 and "valid beats are 0-10" in result.stderr


@pytest.mark.parametrize(
    ("breakage", "field"),
    [("{not json", "not valid JSON"), ('{"idea": "x"}', "field format"), (None, "field beats[2].duration_sec (beat 3)")],
)
def test_invalid_plan_exits_2_and_changes_nothing(run_copy: Path, breakage: str | None, field: str) -> None:
    plan = run_copy / "plan.json"
    if breakage is None:
        edit_plan(run_copy, 3, duration_sec="long")
    else:
        plan.write_text(breakage)
    before = media_hashes(run_copy)
    manifest = (run_copy / "run.json").read_bytes()
    result = cli("run", "--dir", str(run_copy))
    assert result.returncode == 2
    assert str(plan) in result.stderr and field in result.stderr
    assert media_hashes(run_copy) == before and (run_copy / "run.json").read_bytes() == manifest


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


def test_locked_run_exits_3_naming_the_holder(run_copy: Path) -> None:
    hold = "import sys,time; from pathlib import Path; from storyboard.rundir import RunLock\n" \
           "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = cli("run", "--dir", str(run_copy))
        assert result.returncode == 3
        assert f"pid {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def _final_names_are_whole(root: Path) -> None:
    from PIL import Image

    for png in root.glob("beats/*.png"):
        with Image.open(png) as img:
            img.load()
    for mp4 in [*root.glob("clips/*.mp4"), root / "final.mp4"]:
        if mp4.is_file():
            assert probe(mp4).video_duration > 0


@pytest.mark.parametrize("delay", [1.5, 4.0])
def test_kill_9_mid_stage_then_rerun_completes(run_copy: Path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "storyboard.cli", "run", "--dir", str(run_copy), "--regen-beats", "all"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _final_names_are_whole(run_copy)
    result = cli("run", "--dir", str(run_copy))
    assert result.returncode == 0, result.stderr
    assert not [p for p in run_copy.rglob("*") if ".tmp-" in p.name]
    _final_names_are_whole(run_copy)


def test_sigint_exits_130_and_releases_the_lock(run_copy: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "storyboard.cli", "run", "--dir", str(run_copy), "--regen-beats", "all"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not (run_copy / ".lock.json").exists()
    assert not [p for p in run_copy.rglob("*") if ".tmp-" in p.name]
    assert cli("run", "--dir", str(run_copy)).returncode == 0


def test_doctor_reports_ok() -> None:
    result = cli("doctor")
    assert result.returncode == 0, result.stdout
    assert "ffmpeg" in result.stdout and "font" in result.stdout
