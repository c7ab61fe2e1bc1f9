"""RELIABILITY.md cases 22-25: the lock, a dead holder, batches that survive a bad idea, parallel batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from storyboard.rundir import RunLock

from helpers import HOLD_LOCK, cli


def test_case_22_second_process_exits_3_naming_the_holder(run_copy: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = cli("run", "--dir", str(run_copy))
        assert result.returncode == 3
        assert f"locked by pid {holder.pid} (-c {run_copy})" in result.stderr  # pid and command line
    finally:
        holder.kill()
        holder.wait()


def test_case_23_lock_of_a_killed_holder_is_taken_without_manual_unlock(run_copy: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_copy)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunLock(run_copy):
        assert json.loads((run_copy / ".lock.json").read_text())["pid"] == os.getpid()
    assert cli("run", "--dir", str(run_copy)).returncode == 0


def _batch(ideas: Path, out: Path) -> tuple[int, dict]:
    result = cli("batch", str(ideas), "--out", str(out), timeout=600)
    return result.returncode, json.loads(result.stdout)


def test_case_24_batch_with_one_invalid_idea_finishes_the_others_and_resumes(tmp_path: Path) -> None:
    ideas = tmp_path / "ideas.jsonl"
    lines = [
        {"idea": "Why the sky is blue", "format": "explainer5"},
        {"idea": "How bread rises", "format": "explainer5"},
        {"idea": "A broken one", "format": "no-such-format"},
        {"idea": "Why cats purr", "format": "explainer5"},
    ]
    ideas.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    code, summary = _batch(ideas, tmp_path / "out")
    assert code == 1 and summary["status"] == "failed"
    assert [r["status"] for r in summary["runs"]] == ["ok", "ok", "failed", "ok"]
    assert summary["failed"] == [{"line": 3, "idea": "A broken one", "error": summary["runs"][2]["error"]}]
    assert "no-such-format" in summary["failed"][0]["error"]
    assert all(Path(r["final"]).is_file() for r in summary["runs"] if r["status"] == "ok")
    assert summary["loads"] == {"planner": 1, "image": 1, "judge": 1, "tts": 1, "video": 1}  # once per stage for the batch
    assert all(list((Path(r["run_dir"]) / "logs").glob("*.log")) for r in summary["runs"] if r["run_dir"])
    code, again = _batch(ideas, tmp_path / "out")
    assert code == 1 and [r["status"] for r in again["runs"]] == ["ok", "ok", "failed", "ok"]
    assert again["calls"] == {} and again["loads"] == {}  # nothing redone for the three that finished


def test_case_25_parallel_batches_on_different_roots_do_not_collide(tmp_path: Path) -> None:
    ideas = tmp_path / "ideas.txt"
    ideas.write_text("Why the sky is blue\n")
    procs = [subprocess.Popen([sys.executable, "-m", "storyboard.cli", "batch", str(ideas), "--out", str(tmp_path / f"out{i}"),
                               "--format", "explainer5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert json.loads(out)["status"] == "ok"
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
