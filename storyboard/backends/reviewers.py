"""Reviewers of final.mp4: offline checks of the container and its sound, and Gemini watching the video."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StageError
from ..media import decode_audio, probe
from . import BackendBase, register
from .gemini_planner import GeminiPlanner, _timeouts
from .llm_common import parse_json_object


@register("reviewer", "checks")
class ChecksReviewer(BackendBase):
    """Offline: audio vs video length, and speech running into a beat's cut (the truncated punchline)."""

    name = "checks"

    def review(self, video: Path, summary: str, schema: dict[str, Any], spans: list[dict[str, Any]]) -> dict[str, Any]:
        info = probe(video)
        problems = []
        if abs((info.audio_duration or 0) - (info.video_duration or 0)) > 0.1:
            problems.append({"beat": 0, "kind": "other", "problem": f"audio {info.audio_duration:.2f} s vs video {info.video_duration:.2f} s", "regenerate": False})
        samples = decode_audio(video, 16000)
        for span in spans:
            if not span["speaking"]:
                continue
            end = span["end"]  # the last 60 ms of a speaking beat should be its silent tail
            tail = samples[max(0, int((end - 0.07) * 16000)) : int((end - 0.01) * 16000)]
            if tail.size and 20 * np.log10(np.sqrt(np.mean(tail**2)) + 1e-9) > -35:
                problems.append({"beat": span["beat"], "kind": "truncated speech", "problem": f"still speaking at the cut ({end:.2f} s)", "regenerate": True})
        verdict = "fix" if problems else "ship"
        return {"verdict": verdict, "summary": f"Automatic checks of the final: {len(problems)} problem(s).", "problems": problems}


@register("reviewer", "gemini")
class GeminiReviewer(GeminiPlanner):
    """Uploads final.mp4 (files API, resumable), waits until it is ACTIVE, asks for a JSON review."""

    name = "gemini-reviewer"

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "thinking_budget": self.thinking_budget}

    def review(self, video: Path, summary: str, schema: dict[str, Any], spans: list[dict[str, Any]]) -> dict[str, Any]:
        from google.genai import errors, types

        poll_s = float(self.settings.get("poll_s", 2.0))
        wait_s = float(self.settings.get("active_timeout_s", 300))
        try:
            uploaded = self._client.files.upload(file=str(video), config=types.UploadFileConfig(mime_type="video/mp4", display_name=video.name))
            deadline = time.monotonic() + wait_s
            while uploaded.state is not None and str(getattr(uploaded.state, "value", uploaded.state)) == "PROCESSING":
                if time.monotonic() > deadline:
                    raise StageError(f"review: {uploaded.name} still PROCESSING after {wait_s:.0f} s")
                time.sleep(poll_s)
                uploaded = self._client.files.get(name=uploaded.name)
            state = str(getattr(uploaded.state, "value", uploaded.state))
            if state != "ACTIVE":
                raise StageError(f"review: uploaded video is {state}, not ACTIVE")
            prompt = ("Watch this vertical short and review it against its plan. Flag truncated speech (a line cut before "
                      "its last word), pacing, voice/face mismatch, off-model characters, and subtitle problems, each with "
                      f"the beat number it happens in.\n\n{summary}")
            video_part = types.Part.from_uri(file_uri=uploaded.uri, mime_type="video/mp4")
        except _timeouts():
            raise StageError(f"review {self.model}: no answer within {self.timeout_s:.0f} s (timeout_s)") from None
        except errors.APIError as error:
            raise StageError(f"review {self.model}: {error.code} {error.status}: {str(error.message)[:300]}") from None
        response = self.generate_json("review", [video_part, prompt], schema)
        return parse_json_object(response.text or "", f"{self.name} ({self.model})")
