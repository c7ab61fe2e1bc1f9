"""The Gemini planner through google-genai against a loopback server speaking generateContent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from storyboard.backends.template_planner import TemplatePlanner
from storyboard.errors import PreflightError, StageError
from storyboard.formats import load_format
from storyboard.plan import make_plan

from helpers import GeminiServer

IDEA = "A cat who wants to be a judge"
KEY = "AIza-loopback-key"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiServer]:
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    s = GeminiServer()
    yield s
    s.close()


def good_plan() -> str:
    return json.dumps(TemplatePlanner({}).plan(IDEA, load_format("drama10"), 0))


def config(url: str, **extra: Any) -> dict:
    return {"planner": {"backend": "gemini", "base_url": url, "model": "gemini-test", "retry_wait_s": 0.01, "timeout_s": 3,
                        "thinking_budget": 512, "safety": {"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}, **extra}}


def test_good_plan_with_schema_thinking_budget_and_safety(server: GeminiServer) -> None:
    server.answers = [(200, good_plan(), 0, "STOP")]
    plan = make_plan(IDEA, "drama10", config(server.url))
    assert len(plan.beats) == 10
    request = server.requests[0]
    assert request["path"].endswith("/models/gemini-test:generateContent") and request["key"] == KEY
    generation = request["body"]["generationConfig"]
    assert generation["responseMimeType"] == "application/json" and "beats" in json.dumps(generation["responseJsonSchema"])
    assert generation["thinkingConfig"] in ({"thinkingBudget": 512}, {"thinking_budget": 512})  # proto JSON takes either
    assert request["body"]["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]


def test_invalid_json_then_good(server: GeminiServer) -> None:
    server.answers = [(200, '{"idea": ', 0, "STOP"), (200, good_plan(), 0, "STOP")]
    assert len(make_plan(IDEA, "drama10", config(server.url)).beats) == 10
    assert "not valid JSON" in server.requests[1]["body"]["contents"][0]["parts"][0]["text"]


def test_429_then_success(server: GeminiServer) -> None:
    server.answers = [(429, "quota", 0, ""), (200, good_plan(), 0, "STOP")]
    assert len(make_plan(IDEA, "drama10", config(server.url)).beats) == 10
    assert len(server.requests) == 2


def test_truncated_by_thinking_tokens_is_named(server: GeminiServer) -> None:
    server.answers = [(200, good_plan()[:50], 0, "MAX_TOKENS")]
    with pytest.raises(StageError, match="thinking counts too"):
        make_plan(IDEA, "drama10", config(server.url, attempts=1))


def test_hang_times_out(server: GeminiServer) -> None:
    server.answers = [(200, good_plan(), 6, "STOP")]
    started = time.monotonic()
    with pytest.raises(StageError, match="no answer within 1 s"):
        make_plan(IDEA, "drama10", config(server.url, timeout_s=1, attempts=1))
    assert time.monotonic() - started < 5


def test_missing_key_is_a_preflight_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(PreflightError, match="export GOOGLE_API_KEY"):
        make_plan(IDEA, "drama10", config("http://127.0.0.1:9"))


def test_key_from_the_users_keys_file(server: GeminiServer, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"GEMINI_API_KEY: {KEY}-from-file\n")
    keys.chmod(0o600)
    monkeypatch.delenv("GOOGLE_API_KEY")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("STORYBOARD_KEYS_FILE", str(keys))
    server.answers = [(200, good_plan(), 0, "STOP")]
    assert len(make_plan(IDEA, "drama10", config(server.url)).beats) == 10
    assert server.requests[0]["key"] == f"{KEY}-from-file"
