"""The review stage: offline checks of the final, and Gemini's upload-poll-generate against a loopback server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from storyboard.context import RunContext
from storyboard.ffmpeg import run_ffmpeg
from storyboard.media import probe
from storyboard.review import review

from helpers import LoopbackServer


def test_offline_review_of_a_clean_final_ships(run_copy: Path, config: dict) -> None:
    result = review(RunContext.open(run_copy, config))
    assert result.verdict == "ship" and result.beats == [], result
    assert "Nothing to regenerate." in (run_copy / "review.md").read_text()
    ctx = RunContext.open(run_copy, config)
    review(ctx)
    assert ctx.calls["reviewer.call"] == 0  # cached by the final's bytes


def test_speech_running_into_the_cut_is_flagged_with_the_fix_command(run_copy: Path, config: dict) -> None:
    final = run_copy / "final.mp4"
    length = probe(final).video_duration
    # A final whose sound never stops: every speaking beat is cut mid-word.
    run_ffmpeg(["-i", str(final), "-f", "lavfi", "-i", f"sine=f=300:d={length}", "-map", "0:v", "-map", "1:a",
                "-c:v", "copy", "-c:a", "aac", "-ac", "2", str(run_copy / "cut.mp4")])
    (run_copy / "cut.mp4").replace(final)
    result = review(RunContext.open(run_copy, config))
    assert result.verdict == "fix" and result.beats == [0, 1, 2, 3, 5, 7, 8, 10]
    md = (run_copy / "review.md").read_text()
    assert "truncated speech" in md and "--regen-beats 0,1,2,3,5,7,8,10" in md and str(run_copy.name) in md
    assert json.loads((run_copy / "review.json").read_text())["regen_beats"] == [0, 1, 2, 3, 5, 7, 8, 10]


class FilesServer(LoopbackServer):
    """Speaks the files API (resumable upload, get) and generateContent; records the order of calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.polls = 0
        self.uploaded = b""
        super().__init__()
        self.url = self.root

    def answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict, dict[str, str]]:
        file = {"name": "files/abc123", "uri": f"{self.url}/v1beta/files/abc123", "mimeType": "video/mp4", "state": "PROCESSING"}
        if method == "GET":
            self.polls += 1
            self.calls.append("get")
            return 200, {**file, "state": "ACTIVE" if self.polls >= 2 else "PROCESSING"}, {}
        if path.startswith("/upload/") and path.split("?")[0].endswith("/files"):
            self.calls.append(f"start:{headers.get('X-Goog-Upload-Command')}")
            return 200, {}, {"x-goog-upload-url": f"{self.url}/upload-session/1"}
        if path.startswith("/upload-session/1"):
            self.calls.append(f"upload:{headers.get('X-Goog-Upload-Command')}")
            self.uploaded += raw
            return 200, {"file": file}, {"x-goog-upload-status": "final"}
        if ":generateContent" in path:
            part = json.loads(raw)["contents"][0]["parts"][0]
            data = part.get("fileData") or part.get("file_data")
            self.calls.append("generate:" + (data.get("fileUri") or data.get("file_uri")))
            answer = {"verdict": "fix", "summary": "The punchline is cut.", "problems": [
                {"beat": 8, "kind": "truncated speech", "problem": "'Case closed' loses its last word", "regenerate": True}]}
            return 200, {"candidates": [{"content": {"role": "model", "parts": [{"text": json.dumps(answer)}]}, "finishReason": "STOP"}]}, {}
        self.calls.append(f"unexpected {method} {path}")
        return 404, {}, {}


@pytest.fixture
def files_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FilesServer]:
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-loopback")
    s = FilesServer()
    yield s
    s.close()


def test_gemini_reviewer_uploads_polls_until_active_then_reviews(run_copy: Path, config: dict, files_server: FilesServer) -> None:
    config = {**config, "reviewer": {"backend": "gemini", "base_url": files_server.url, "model": "gemini-test", "poll_s": 0.01, "timeout_s": 10}}
    result = review(RunContext.open(run_copy, config))
    assert files_server.calls[0] == "start:start" and files_server.calls[1] == "upload:upload, finalize"
    assert files_server.calls[2:4] == ["get", "get"] and files_server.calls[4].startswith("generate:")
    assert files_server.uploaded == (run_copy / "final.mp4").read_bytes()
    assert result.beats == [8]
    md = (run_copy / "review.md").read_text()
    assert "The punchline is cut." in md and "--regen-beats 8" in md
    assert "AIza-loopback" not in md and "AIza-loopback" not in (run_copy / "run.json").read_text()
