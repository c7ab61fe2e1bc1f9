"""The Gemini judge through google-genai against a loopback server speaking generateContent."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from storyboard.errors import StoryboardError
from storyboard.pipeline import run_stages
from storyboard.profiles import resolve_config

from helpers import GeminiServer

KEY = "AIza-judge-loopback-key"


def test_gemini_judge_sends_each_image_with_its_needs_and_redraws_a_no(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    server = GeminiServer()
    try:
        yes = json.dumps({"ok": True, "reason": "matches the beat"})
        no = json.dumps({"ok": False, "reason": "two people in frame, one needed"})
        # Beat 0 (hook): NO then YES; the other ten: YES; one 503 on the way is retried by the SDK.
        server.answers = [(200, no, 0, "STOP"), (503, "busy", 0, ""), (200, yes, 0, "STOP")] + [(200, yes, 0, "STOP")] * 10
        (run_copy / "judge.json").unlink()
        config = resolve_config("offline", {"judge": {"backend": "gemini", "base_url": server.url, "model": "gemini-judge-test",
                                                      "retry_wait_s": 0.01, "timeout_s": 5, "max_retries": 2}})
        summary = run_stages(run_copy, config, stages=("judge",))
    finally:
        server.close()
    assert summary.status == "ok", summary
    verdicts = json.loads((run_copy / "judge.json").read_text())["beats"]
    assert [a["ok"] for a in verdicts["0"]["attempts"]] == [False, True]
    assert verdicts["0"]["attempts"][0]["reason"] == "two people in frame, one needed"
    assert all(verdicts[str(n)]["ok"] for n in range(11))
    first = server.requests[0]
    assert first["path"].endswith("/models/gemini-judge-test:generateContent") and first["key"] == KEY
    parts = first["body"]["contents"][0]["parts"]
    image = parts[0].get("inlineData") or parts[0].get("inline_data")
    assert image["mimeType" if "mimeType" in image else "mime_type"] == "image/png"
    data = image["data"]  # the SDK sends URL-safe base64
    assert base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Check every point" in parts[1]["text"] and "Setting:" in parts[1]["text"]
    assert first["body"]["generationConfig"]["responseMimeType"] == "application/json"
    assert KEY not in (run_copy / "judge.json").read_text() and KEY not in (run_copy / "run.json").read_text()


def test_gemini_judge_without_a_key_fails_before_any_work(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (run_copy / "judge.json").unlink()
    config = resolve_config("offline", {"judge": {"backend": "gemini", "base_url": "http://127.0.0.1:9"}})
    with pytest.raises(StoryboardError, match="GOOGLE_API_KEY"):
        run_stages(run_copy, config, stages=("judge",))
