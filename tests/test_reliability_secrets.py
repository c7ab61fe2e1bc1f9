"""RELIABILITY.md case 26: API keys never reach run.json, logs, reviews, tracebacks or --json output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SECRET = "AIzaSy-test-secret-0123456789"


def test_case_26_keys_never_appear_in_run_files_logs_or_output(tmp_path: Path) -> None:
    env = {**os.environ, "GOOGLE_API_KEY": SECRET, "GEMINI_API_KEY": SECRET, "OPENAI_API_KEY": SECRET}
    outputs = []
    for args in (["run", "--idea", "Why the sky is blue", "--format", "explainer5", "--out", str(tmp_path), "--json"],
                 ["run", "--idea", "x", "--format", "nope", "--out", str(tmp_path), "--json"],
                 ["doctor", "--json"]):
        result = subprocess.run([sys.executable, "-m", "storyboard.cli", *args], capture_output=True, text=True, env=env, timeout=300)
        outputs += [result.stdout, result.stderr]
    run_dir = next(tmp_path.iterdir())
    assert (run_dir / "final.mp4").is_file() and list((run_dir / "logs").glob("*.log"))
    assert "GOOGLE_API_KEY, GEMINI_API_KEY, OPENAI_API_KEY set" in outputs[4]  # doctor says a key is there, never what it is
    for text in outputs:
        assert SECRET not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
