"""Offline profile timings on this machine: full draft run, no-op rerun, fix-one-line, re-render.

Usage: .venv/bin/python bench/offline_loop.py [--runs 3]
Each figure is the wall time of the real `storyboard` command in a fresh subprocess (imports
included), measured side by side in one session; prints a JSON table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(*args: str, cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "storyboard.cli", *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def edit_line(run_dir: Path, beat: int, text: str) -> None:
    plan = json.loads((run_dir / "plan.json").read_text())
    plan["beats"][beat - 1]["line"] = text
    (run_dir / "plan.json").write_text(json.dumps(plan, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"full_draft_10beat": [], "rerun_nothing_changed": [], "edit_one_line": [], "regen_none": []}
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp)
            figures["full_draft_10beat"].append(timed("run", "--idea", f"A cat who wants to be a judge {i}", cwd=cwd))
            run_dir = next((cwd / "outputs").iterdir())
            figures["rerun_nothing_changed"].append(timed("run", "--dir", str(run_dir), cwd=cwd))
            edit_line(run_dir, 3, f"No. Rules are rules, take {i}.")
            figures["edit_one_line"].append(timed("run", "--dir", str(run_dir), cwd=cwd))
            figures["regen_none"].append(timed("run", "--dir", str(run_dir), "--regen-beats", "none", cwd=cwd))
    table = {k: {"median_s": round(statistics.median(v), 2), "max_s": round(max(v), 2), "runs": len(v)} for k, v in figures.items()}
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
