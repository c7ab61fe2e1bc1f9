"""Formats: a system prompt plus a beat skeleton, read from `prompts/formats/*.yaml`."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError
from .resources import prompts_dir
from .schema import CastMember, Renderer, describe_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HookSpec(_Strict):
    """Hook templates; `{subject}` and `{<cast>_name}` are filled by planners."""

    duration_sec: float = Field(gt=0)
    title_overlay: str
    narrator_line: str
    image_prompt: str


class BeatSkeleton(_Strict):
    """What a planner must produce for one beat; `line` and prompts are templates."""

    type: str
    speaker: str | None = None
    renderer: Renderer
    intent: str
    duration_sec: float = Field(gt=0)
    characters: list[str] = Field(default_factory=list)
    expression: str = ""
    line: str = ""
    image_prompt: str


class Format(_Strict):
    """A short's shape: cast, style, size and beats."""

    name: str
    description: str
    language: str = "en"
    width: int = 512
    height: int = 768
    fps: int = 24
    style_suffix: str = ""
    setting: str
    system_prompt: str
    hook: HookSpec
    cast: dict[str, CastMember]
    beats: list[BeatSkeleton] = Field(min_length=1)


def formats_root() -> Path:
    """Folder holding the format YAML files."""
    return prompts_dir() / "formats"


def format_names() -> list[str]:
    """Names of every format on disk."""
    return sorted(p.stem for p in formats_root().glob("*.yaml"))


def load_format(name: str) -> Format:
    """Read and validate one format; errors list the valid names."""
    names = format_names()
    path = formats_root() / f"{name}.yaml"
    if name not in names:
        raise InputError(f"unknown format {name!r}; valid formats: {', '.join(names) or '(none found)'}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: broken YAML: {error}\nvalid formats: {', '.join(names)}") from None
    try:
        return Format.model_validate(data)
    except ValidationError as error:
        detail = describe_validation_error(str(path), error)
        raise InputError(f"{detail}\nvalid formats: {', '.join(names)}") from None
