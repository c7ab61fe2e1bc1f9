"""The OpenAI-compatible planner against a loopback server speaking /v1/chat/completions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storyboard.backends.template_planner import TemplatePlanner
from storyboard.errors import StageError
from storyboard.formats import load_format
from storyboard.plan import make_plan

from helpers import LoopbackServer

IDEA = "A cat who wants to be a judge"


class ChatServer(LoopbackServer):
    """Answers each POST from a queue of (status, content, delay); records requests."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, Any, float]] = []
        self.requests: list[dict[str, Any]] = []
        super().__init__()
        self.url = f"{self.root}/v1"

    def answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict, dict[str, str]]:
        self.requests.append({"path": path, "auth": headers.get("Authorization"), "body": json.loads(raw)})
        status, content, delay = self.answers.pop(0)
        time.sleep(delay)
        if status != 200:
            return status, {"error": {"message": str(content), "type": "server_error"}}, {}
        return 200, {"id": "c1", "object": "chat.completion", "model": "m",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}, {}


@pytest.fixture
def server() -> Iterator[ChatServer]:
    s = ChatServer()
    yield s
    s.close()


def good_plan() -> str:
    return json.dumps(TemplatePlanner({}).plan(IDEA, load_format("drama10"), 0))


def config(url: str, **extra: Any) -> dict:
    return {"planner": {"backend": "openai", "base_url": url, "model": "qwen-test", "retry_wait_s": 0.01, "timeout_s": 2, **extra}}


def test_good_plan_with_json_response_format(server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    server.answers = [(200, good_plan(), 0)]
    plan = make_plan(IDEA, "drama10", config(server.url))
    assert len(plan.beats) == 10 and plan.cast["lead"].name == "Mia"
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-loopback"
    assert request["body"]["response_format"] == {"type": "json_object"} and request["body"]["model"] == "qwen-test"
    assert "A cat who wants to be a judge" in request["body"]["messages"][1]["content"]


def test_invalid_json_then_wrong_schema_are_fed_back_then_a_good_plan(server: ChatServer) -> None:
    broken = json.loads(good_plan())
    broken["beats"][2]["renderer"] = "x2v"
    server.answers = [(200, "Sure! Here is your plan: {", 0), (200, json.dumps(broken), 0), (200, good_plan(), 0)]
    plan = make_plan(IDEA, "drama10", config(server.url))
    assert plan.beats[2].renderer == "a2v"
    feedback = [r["body"]["messages"][1]["content"].split("rejected:")[-1] for r in server.requests[1:]]
    assert "not valid JSON" in feedback[0] and "beats[2].renderer (beat 3)" in feedback[1]


def test_invalid_every_time_is_reported_and_nothing_written(server: ChatServer, tmp_path: Path) -> None:
    from storyboard.pipeline import create_run

    server.answers = [(200, '{"idea": "x"}', 0)] * 3
    with pytest.raises(StageError, match=r"(?s)no valid plan in 3 attempts.*field format"):
        create_run(IDEA, "drama10", config(server.url), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_429_and_503_are_retried_with_backoff(server: ChatServer) -> None:
    server.answers = [(429, "slow down", 0), (503, "overloaded", 0), (200, good_plan(), 0)]
    assert len(make_plan(IDEA, "drama10", config(server.url)).beats) == 10
    assert len(server.requests) == 3


def test_retries_are_bounded(server: ChatServer) -> None:
    server.answers = [(500, "boom", 0)] * 3
    with pytest.raises(StageError, match=r"gave up after 3 attempts.*HTTP 500"):
        make_plan(IDEA, "drama10", config(server.url, attempts=3))


def test_a_hung_server_times_out_with_a_clear_error(server: ChatServer) -> None:
    server.answers = [(200, good_plan(), 5)]
    started = time.monotonic()
    with pytest.raises(StageError, match=r"no answer within 1 s"):
        make_plan(IDEA, "drama10", config(server.url, timeout_s=1))
    assert time.monotonic() - started < 4
