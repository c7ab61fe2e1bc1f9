"""The plan: the script of one short, editable by hand and validated on every read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError

Renderer = Literal["a2v", "i2v", "sfx"]
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CastMember(_Strict):
    """A character: how they look and how they sound."""

    name: str = Field(min_length=1)
    appearance: str = Field(min_length=1)
    voice: str = "joe"
    voice_pitch: float = Field(0.0, ge=-12, le=12, description="semitones")
    voice_speed: float = Field(1.0, gt=0.5, le=2.0)


class Hook(_Strict):
    """Beat 0: a narrated opener with a title over the top of the frame."""

    title_overlay: str = Field(min_length=1)
    narrator_line: str = Field(min_length=1)
    image_prompt: str = Field(min_length=1)
    duration_sec: float = Field(gt=0, le=30)
    narrator: str = "narrator"


class Beat(_Strict):
    """One shot of the short, after the hook."""

    type: str
    speaker: str | None = None
    line: str = ""
    expression: str = ""
    action: str = ""
    image_prompt: str = Field(min_length=1)
    renderer: Renderer
    duration_sec: float = Field(gt=0, le=60)
    characters: list[str] = Field(default_factory=list)
    setting_override: str | None = None

    @field_validator("type")
    @classmethod
    def _ascii_type(cls, value: str) -> str:
        if not _TYPE_RE.match(value):
            raise ValueError("must be lower-case ASCII letters, digits or _ (it names files)")
        return value

    @model_validator(mode="after")
    def _line_matches_renderer(self) -> Beat:
        if self.renderer == "a2v" and not (self.line and self.speaker):
            raise ValueError("an a2v beat needs a speaker and a line")
        if self.renderer != "a2v" and self.line:
            raise ValueError(f"a {self.renderer} beat is silent: leave its line empty or use a2v")
        return self


class Plan(_Strict):
    """The whole script: cast, setting, hook and beats 1..N."""

    idea: str = Field(min_length=1)
    language: str = "en"
    format: str
    title: str = Field(min_length=1)
    cast: dict[str, CastMember]
    setting: str = Field(min_length=1)
    style: str = ""
    width: int = Field(512, ge=64, le=4096)
    height: int = Field(768, ge=64, le=4096)
    fps: int = Field(24, ge=1, le=120)
    seed: int = 0
    hook: Hook
    beats: list[Beat] = Field(min_length=1, max_length=98)

    @model_validator(mode="after")
    def _references_exist(self) -> Plan:
        known = sorted(self.cast)
        if self.hook.narrator not in self.cast:
            raise ValueError(f"hook.narrator {self.hook.narrator!r} is not in cast {known}")
        for number, beat in enumerate(self.beats, start=1):
            for who in [beat.speaker, *beat.characters]:
                if who is not None and who not in self.cast:
                    raise ValueError(f"beat {number}: {who!r} is not in cast {known}")
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (H.264 yuv420p)")
        return self

    # Users name beats 0..N: 0 is the hook, 1..N index `beats`.
    @property
    def beat_numbers(self) -> list[int]:
        """Every beat number, hook included."""
        return list(range(len(self.beats) + 1))

    def beat(self, number: int) -> Beat:
        """Beat `number` (1..N); the hook is not a Beat."""
        return self.beats[number - 1]

    def beat_type(self, number: int) -> str:
        """The type that names beat `number`'s files."""
        return "hook" if number == 0 else self.beats[number - 1].type


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    match = re.match(r"^beats\[(\d+)\]", path)
    if match:
        path += f" (beat {int(match.group(1)) + 1})"
    return path or "(top level)"


def describe_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem, each naming the file and the field."""
    lines = []
    for item in error.errors():
        lines.append(f"{source}: field {_field_path(item['loc'])}: {item['msg']}")
    return "\n".join(lines)


def parse_plan(data: object, source: str = "plan.json") -> Plan:
    """Validate a decoded plan; raise InputError naming `source` and the field."""
    try:
        return Plan.model_validate(data)
    except ValidationError as error:
        raise InputError(describe_validation_error(source, error)) from None


def load_plan(path: Path) -> Plan:
    """Read and validate plan.json."""
    if not path.is_file():
        raise InputError(f"{path}: no plan here (run `storyboard plan` first, or check the path)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    return parse_plan(data, str(path))


def plan_to_json(plan: Plan) -> str:
    """The text written to plan.json (stable, human-editable)."""
    return json.dumps(plan.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n"
