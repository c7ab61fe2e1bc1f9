"""API keys: the environment first, then the user's keys file; never written anywhere by storyboard."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import yaml

log = logging.getLogger("storyboard")


def keys_file() -> Path:
    """$STORYBOARD_KEYS_FILE, else $XDG_CONFIG_HOME/storyboard/keys.yaml (~/.config/... by default)."""
    if os.environ.get("STORYBOARD_KEYS_FILE"):
        return Path(os.environ["STORYBOARD_KEYS_FILE"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "storyboard" / "keys.yaml"


def _from_file() -> dict[str, str]:
    path = keys_file()
    if not path.is_file():
        return {}
    if path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s is readable by other users; chmod 600 it", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        log.warning("%s: not read (%s)", path, type(error).__name__)  # the message could quote the key
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def api_key(*names: str) -> str | None:
    """The first of `names` set in the environment, else in the keys file (e.g. `GOOGLE_API_KEY: ...`)."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    stored = _from_file()
    for name in names:
        if stored.get(name):
            return stored[name]
    return None
