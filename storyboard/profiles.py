"""Profiles choose backends; precedence is CLI flag > STORYBOARD_* env > profile > defaults."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError
from .resources import profiles_dir

DEFAULT_PROFILE = "offline"
SECTIONS = ("planner", "image", "judge", "tts", "qa", "video", "reviewer", "render")


def profile_names() -> list[str]:
    """Built-in profile names."""
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _read_profile(name: str) -> dict[str, Any]:
    path = Path(name) if name.endswith((".yaml", ".yml")) else profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"unknown profile {name!r}; valid profiles: {', '.join(profile_names())} (or a path to a .yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise InputError(f"{path}: broken YAML: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a profile is a mapping of sections ({', '.join(SECTIONS)})")
    for section in SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise InputError(f"{path}: field {section}: must be a mapping")
    return data


def _env_value(raw: str) -> Any:
    parsed = yaml.safe_load(raw)
    return parsed if isinstance(parsed, (int, float, bool)) else raw


def resolve_config(profile: str | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Merge profile, `STORYBOARD_<SECTION>_<KEY>` variables and CLI overrides."""
    name = profile or os.environ.get("STORYBOARD_PROFILE") or DEFAULT_PROFILE
    config = copy.deepcopy(_read_profile(name))
    config["profile"] = config.get("name", name)
    for section in SECTIONS:
        config.setdefault(section, {})
        prefix = f"STORYBOARD_{section.upper()}_"
        for var, raw in os.environ.items():
            if var.startswith(prefix):
                config[section][var[len(prefix):].lower()] = _env_value(raw)
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    config["reviewer"].setdefault("backend", "checks")
    config["qa"].setdefault("backend", "none")
    return config
