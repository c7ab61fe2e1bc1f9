"""Planner on any OpenAI-compatible `/v1/chat/completions` server (vLLM, Ollama, llama.cpp server)."""

from __future__ import annotations

from typing import Any

from ..errors import StageError
from ..formats import Format
from ..secrets import api_key
from . import BackendBase, register
from .llm_common import RETRY_STATUS, parse_json_object, planner_messages, with_retries


class _Retryable(Exception):
    """A 429/5xx answer worth another try."""


@register("planner", "openai")
class OpenAIPlanner(BackendBase):
    """Settings: base_url, model, timeout_s (default 120), attempts (4), retry_wait_s (1), temperature."""

    name = "openai"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.base_url = str(settings.get("base_url", "http://127.0.0.1:8000/v1")).rstrip("/")
        self.model = str(settings.get("model", "default"))
        self.timeout_s = float(settings.get("timeout_s", 120))
        self.attempts = int(settings.get("attempts", 4))
        self.wait_s = float(settings.get("retry_wait_s", 1.0))
        self.temperature = float(settings.get("temperature", 0.7))

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url}

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        headers = {}
        key = api_key(str(self.settings.get("api_key_env", "OPENAI_API_KEY")))
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = httpx.post(f"{self.base_url}/chat/completions", json=payload, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException:
            raise StageError(f"planner {self.model} at {self.base_url}: no answer within {self.timeout_s:.0f} s (timeout_s)") from None
        except httpx.TransportError as error:
            raise _Retryable(f"cannot reach {self.base_url}: {error}") from None
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise StageError(f"planner {self.model} at {self.base_url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def plan(self, idea: str, fmt: Format, seed: int, feedback: str | None = None) -> dict[str, Any]:
        system, user = planner_messages(idea, fmt, seed, feedback)
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "response_format": {"type": "json_object"},
            "temperature": self.temperature,
            "seed": seed,
        }
        body = with_retries(lambda: self._post(payload), what=f"planner {self.model}", attempts=self.attempts,
                            wait_s=self.wait_s, retryable=lambda e: isinstance(e, _Retryable))
        try:
            text = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise StageError(f"planner {self.model}: unexpected answer shape: {str(body)[:300]}") from None
        return parse_json_object(text or "", f"{self.name} planner ({self.model})")
