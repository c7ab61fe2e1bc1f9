"""Where formats, profiles and assets live, for a checkout and for an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def prompts_dir() -> Path:
    """The `prompts/` folder: $STORYBOARD_PROMPTS, the wheel's copy, or the checkout's."""
    env = os.environ.get("STORYBOARD_PROMPTS")
    if env:
        return Path(env)
    return _first_existing(PACKAGE_DIR / "_prompts", PACKAGE_DIR.parent / "prompts")


def assets_dir() -> Path:
    """The `assets/` folder (fonts, voices, sfx, bgm)."""
    return _first_existing(PACKAGE_DIR / "_assets", PACKAGE_DIR.parent / "assets")


def profiles_dir() -> Path:
    """Built-in profiles shipped with the package."""
    return PACKAGE_DIR / "profiles"
