"""Planner on Gemini through google-genai: JSON constrained by the plan's schema, explicit thinking budget."""

from __future__ import annotations

from typing import Any

from ..errors import PreflightError, StageError
from ..formats import Format
from ..secrets import api_key, keys_file
from . import BackendBase, register
from .llm_common import RETRY_STATUS, parse_json_object, plan_schema, planner_messages

KEY_VARIABLES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")


def gemini_key() -> str:
    """The API key from the environment or the user's keys file (never from the run directory or a profile)."""
    key = api_key(*KEY_VARIABLES)
    if key:
        return key
    raise PreflightError(f"Gemini needs an API key: export GOOGLE_API_KEY=... (or GEMINI_API_KEY), or put `GOOGLE_API_KEY: ...` in {keys_file()}")


def _timeouts() -> tuple[type[BaseException], ...]:
    """Timeout exceptions of the HTTP client google-genai uses (httpx, or its httpx2 fork in newer releases)."""
    found: list[type[BaseException]] = []
    for module in ("httpx", "httpx2"):
        try:
            found.append(__import__(module).TimeoutException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


@register("planner", "gemini")
class GeminiPlanner(BackendBase):
    """Settings: model, thinking_budget (tokens; thinking counts against max_output_tokens),
    max_output_tokens, timeout_s, attempts, retry_wait_s, safety (category → threshold), base_url."""

    name = "gemini"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.model = str(settings.get("model", "gemini-2.5-flash"))
        self.thinking_budget = int(settings.get("thinking_budget", 1024))
        self.max_output_tokens = int(settings.get("max_output_tokens", 16384))
        self.timeout_s = float(settings.get("timeout_s", 120))
        self.attempts = int(settings.get("attempts", 4))
        self.wait_s = float(settings.get("retry_wait_s", 1.0))
        self.safety: dict[str, str] = dict(settings.get("safety", {}))
        self.base_url = settings.get("base_url")
        self._client: Any = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "thinking_budget": self.thinking_budget}

    def missing_models(self) -> list[str]:
        return [] if api_key(*KEY_VARIABLES) else [f"GOOGLE_API_KEY (export it, or put it in {keys_file()})"]

    def __enter__(self) -> GeminiPlanner:
        from google import genai
        from google.genai import types

        retry = types.HttpRetryOptions(attempts=self.attempts, initial_delay=self.wait_s, max_delay=30 * self.wait_s,
                                       http_status_codes=sorted(RETRY_STATUS))
        options = types.HttpOptions(timeout=int(self.timeout_s * 1000), retry_options=retry,
                                    **({"base_url": str(self.base_url)} if self.base_url else {}))
        self._client = genai.Client(api_key=gemini_key(), http_options=options)
        return self

    def __exit__(self, *exc: object) -> None:
        self._client = None

    def generate_json(self, what: str, contents: Any, schema: dict[str, Any], **config: Any) -> Any:
        """generateContent constrained to `schema` (explicit thinking budget, safety settings); errors named for `what`."""
        from google.genai import errors, types

        settings = types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=schema,
            thinking_config=types.ThinkingConfig(thinking_budget=self.thinking_budget), max_output_tokens=self.max_output_tokens,
            safety_settings=[types.SafetySetting(category=c, threshold=t) for c, t in self.safety.items()], **config,
        )
        try:
            return self._client.models.generate_content(model=self.model, contents=contents, config=settings)
        except _timeouts():
            raise StageError(f"{what} {self.model}: no answer within {self.timeout_s:.0f} s (timeout_s)") from None
        except errors.APIError as error:
            raise StageError(f"{what} {self.model}: {error.code} {error.status}: {str(error.message)[:300]}") from None

    def plan(self, idea: str, fmt: Format, seed: int, feedback: str | None = None) -> dict[str, Any]:
        system, user = planner_messages(idea, fmt, seed, feedback)
        response = self.generate_json("planner", user, plan_schema(), system_instruction=system, seed=seed)
        candidate = (response.candidates or [None])[0]
        reason = getattr(candidate, "finish_reason", None)
        if reason is not None and str(getattr(reason, "value", reason)) == "MAX_TOKENS":
            raise StageError(f"planner {self.model}: answer cut at max_output_tokens={self.max_output_tokens} "
                             f"(thinking counts too: lower thinking_budget or raise max_output_tokens)")
        return parse_json_object(response.text or "", f"{self.name} planner ({self.model})")
