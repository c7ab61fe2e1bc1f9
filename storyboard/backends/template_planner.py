"""Offline planner: fills a format's skeleton from the idea, deterministically, no LLM."""

from __future__ import annotations

import re
from typing import Any

from ..formats import Format
from . import BackendBase, register


def subject_of(idea: str) -> str:
    """The idea as a phrase that reads inside a sentence."""
    text = re.sub(r"\s+", " ", idea).strip().rstrip(".!?。！？")
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        text = text[0].lower() + text[1:]
    return text or "this idea"


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format_map(values).strip()


def template_values(idea: str, fmt: Format) -> dict[str, str]:
    """Substitutions available to format templates."""
    subject = subject_of(idea)
    values = {"subject": subject, "Subject": subject[:1].upper() + subject[1:], "idea": idea.strip()}
    for cast_id, member in fmt.cast.items():
        values[f"{cast_id}_name"] = member.name
    return values


@register("planner", "template")
class TemplatePlanner(BackendBase):
    """Writes readable lines about the idea's subject from the format's templates."""

    name = "template"

    def plan(self, idea: str, fmt: Format, seed: int, feedback: str | None = None) -> dict[str, Any]:
        values = template_values(idea, fmt)
        beats = []
        for skeleton in fmt.beats:
            beats.append(
                {
                    "type": skeleton.type,
                    "speaker": skeleton.speaker,
                    "line": _fill(skeleton.line, values),
                    "expression": skeleton.expression,
                    "action": skeleton.intent,
                    "image_prompt": _fill(skeleton.image_prompt, values),
                    "renderer": skeleton.renderer,
                    "duration_sec": skeleton.duration_sec,
                    "characters": list(skeleton.characters),
                }
            )
        title = _fill(fmt.hook.title_overlay, values)
        return {
            "idea": idea.strip(),
            "language": fmt.language,
            "format": fmt.name,
            "title": title,
            "cast": {cast_id: member.model_dump() for cast_id, member in fmt.cast.items()},
            "setting": fmt.setting,
            "style": fmt.style_suffix,
            "width": fmt.width,
            "height": fmt.height,
            "fps": fmt.fps,
            "seed": seed,
            "hook": {
                "title_overlay": title,
                "narrator_line": _fill(fmt.hook.narrator_line, values),
                "image_prompt": _fill(fmt.hook.image_prompt, values),
                "duration_sec": fmt.hook.duration_sec,
                "narrator": "narrator",
            },
            "beats": beats,
        }
