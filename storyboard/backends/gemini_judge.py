"""Judge on Gemini: each beat image with what the beat needs, a JSON verdict back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ImageRequest, Verdict, register
from .gemini_planner import GeminiPlanner
from .judging import VERDICT_SCHEMA, parse_verdict, question


@register("judge", "gemini")
class GeminiJudge(GeminiPlanner):
    """Settings as the Gemini planner (model, thinking_budget, timeout_s, attempts, safety, base_url)."""

    name = "gemini-judge"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__({"thinking_budget": 256, "max_output_tokens": 2048, **settings})

    def judge(self, image: Path, request: ImageRequest) -> Verdict:
        from google.genai import types

        contents = [types.Part.from_bytes(data=image.read_bytes(), mime_type="image/png"), question(request)]
        return parse_verdict(self.generate_json("judge", contents, VERDICT_SCHEMA).text or "")
