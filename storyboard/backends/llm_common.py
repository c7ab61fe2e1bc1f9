"""What every LLM planner shares: the prompt built from a format, JSON parsing, bounded HTTP retries."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import InputError, StageError
from ..formats import Format
from ..schema import Plan

log = logging.getLogger("storyboard")
T = TypeVar("T")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def plan_schema() -> dict[str, Any]:
    """The plan's JSON schema (from the pydantic model), for constrained output."""
    return Plan.model_json_schema()


def planner_messages(idea: str, fmt: Format, seed: int, feedback: str | None) -> tuple[str, str]:
    """(system, user) messages: the format's system prompt; the idea, skeleton, cast and schema."""
    skeleton = {
        "format": fmt.name, "language": fmt.language, "width": fmt.width, "height": fmt.height, "fps": fmt.fps,
        "setting": fmt.setting, "style": fmt.style_suffix, "seed": seed,
        "cast": {cid: member.model_dump() for cid, member in fmt.cast.items()},
        "hook": {"duration_sec": fmt.hook.duration_sec, "narrator": "narrator", "examples": fmt.hook.model_dump()},
        "beats": [b.model_dump(exclude={"line", "image_prompt"}) for b in fmt.beats],
    }
    user = (
        f"Idea: {idea.strip()}\n\n"
        f"Write plan.json for this idea. Follow this skeleton exactly (same beats, types, speakers, renderers):\n"
        f"{json.dumps(skeleton, ensure_ascii=False)}\n\n"
        f"Answer with one JSON object valid against this JSON schema, nothing else:\n{json.dumps(plan_schema())}"
    )
    if feedback:
        user += f"\n\nYour previous answer was rejected: {feedback}\nFix exactly that and answer again."
    return fmt.system_prompt, user


def parse_json_object(text: str, source: str) -> dict[str, Any]:
    """The JSON object in a model's answer (code fences tolerated); InputError if there is none."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as error:
        raise InputError(f"{source}: the answer is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: the answer is JSON but not an object")
    return data


def with_retries(call: Callable[[], T], *, what: str, attempts: int, wait_s: float, retryable: Callable[[BaseException], bool]) -> T:
    """Run `call`; retry what `retryable` accepts with exponential backoff, `attempts` times at most."""
    from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=wait_s, max=30 * wait_s),
        retry=retry_if_exception(retryable),
        before_sleep=lambda state: log.warning("%s: attempt %d failed (%s); retrying", what, state.attempt_number, state.outcome.exception()),
        reraise=False,
    )
    try:
        return retrying(call)
    except RetryError as error:
        last = error.last_attempt.exception()
        raise StageError(f"{what}: gave up after {attempts} attempts: {last}") from None
