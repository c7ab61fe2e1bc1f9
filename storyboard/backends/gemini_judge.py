"""Judge on Gemini: each beat image with what the beat needs, a JSON verdict back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import StageError
from . import ImageRequest, Verdict, register
from .gemini_planner import GeminiPlanner, _timeouts
from .judging import VERDICT_SCHEMA, parse_verdict, question


@register("judge", "gemini")
class GeminiJudge(GeminiPlanner):
    """Settings as the Gemini planner (model, thinking_budget, timeout_s, attempts, safety, base_url)."""

    name = "gemini-judge"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__({"thinking_budget": 256, "max_output_tokens": 2048, **settings})

    def judge(self, image: Path, request: ImageRequest) -> Verdict:
        from google.genai import errors, types

        config = types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=VERDICT_SCHEMA,
            thinking_config=types.ThinkingConfig(thinking_budget=self.thinking_budget), max_output_tokens=self.max_output_tokens,
            safety_settings=[types.SafetySetting(category=c, threshold=t) for c, t in self.safety.items()],
        )
        contents = [types.Part.from_bytes(data=image.read_bytes(), mime_type="image/png"), question(request)]
        try:
            response = self._client.models.generate_content(model=self.model, contents=contents, config=config)
        except _timeouts():
            raise StageError(f"judge {self.model}: no answer within {self.timeout_s:.0f} s (timeout_s)") from None
        except errors.APIError as error:
            raise StageError(f"judge {self.model}: {error.code} {error.status}: {str(error.message)[:300]}") from None
        return parse_verdict(response.text or "")
