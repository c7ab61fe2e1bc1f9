"""Backends: one small interface per capability and a registry keyed by name.

A backend is a context manager: entering loads its model (once per stage), leaving frees
it. `identity()` is what goes into content keys (backend name, model id, parameters).
Adding a model is adding one module that calls `register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputError, PreflightError
from ..formats import Format


@dataclass(frozen=True)
class ImageRequest:
    """One frame to draw."""

    number: int
    beat_type: str
    prompt: str
    width: int
    height: int
    seed: int
    quality: str
    setting: str
    characters: list[str] = field(default_factory=list)
    expression: str = ""
    caption: str = ""
    silent: bool = False  # nobody speaks in this beat: mouths should be closed
    base: Path | None = None  # the base scene this beat is drawn as an edit of (image backends with `uses_base`)


@dataclass(frozen=True)
class Verdict:
    """A judge's answer for one image."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class VoiceSpec:
    """How a line is voiced: model voice id, pitch shift and speed."""

    voice: str
    pitch: float = 0.0
    speed: float = 1.0


@dataclass(frozen=True)
class ClipRequest:
    """One clip to animate."""

    number: int
    renderer: str
    image: Path
    audio: Path | None
    duration: float
    width: int
    height: int
    fps: int
    seed: int
    prompt: str
    previous_clip: Path | None = None


class Backend(Protocol):
    name: str

    def identity(self) -> dict[str, Any]: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...


class Planner(Backend, Protocol):
    def plan(self, idea: str, fmt: Format, seed: int, feedback: str | None = None) -> dict[str, Any]: ...


class ImageBackend(Backend, Protocol):
    def draw(self, request: ImageRequest, out: Path) -> None: ...


class Judge(Backend, Protocol):
    def judge(self, image: Path, request: ImageRequest) -> Verdict: ...


class TTS(Backend, Protocol):
    def speak(self, text: str, voice: VoiceSpec, language: str, seed: int, out_wav: Path) -> None: ...


class VideoBackend(Backend, Protocol):
    sfx_from_previous: bool

    def animate(self, request: ClipRequest, out: Path) -> None: ...


class BackendBase:
    """Shared plumbing: keeps its settings, names itself in keys, loads nothing unless overridden."""

    name = "base"

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name}

    def workers_setting(self, section: str, default: int) -> int:
        """The `workers` setting: items in flight at a time (0: one per core); PreflightError naming `section.workers`."""
        value = self.settings.get("workers", default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PreflightError(f"{section}.workers: {value!r}; give a whole number of items at a time, 1 or more (0: one per core)")
        return value

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


Factory = Callable[[dict[str, Any]], Any]
_REGISTRY: dict[str, dict[str, Factory]] = {}
CAPABILITIES = ("planner", "image", "judge", "tts", "qa", "video", "reviewer")
_BUILTIN_MODULES = ["template_planner", "openai_planner", "gemini_planner", "transformers_planner", "card", "diffusers_image",
                    "heuristic_judge", "gemini_judge", "vlm_judge", "piper_tts", "transformers_tts", "recognisers", "kenburns", "diffusers_video", "ltx2_video", "reviewers"]


def register(capability: str, name: str) -> Callable[[Factory], Factory]:
    """Decorator: make a backend class available under `name` for `capability`."""

    def wrap(factory: Factory) -> Factory:
        _REGISTRY.setdefault(capability, {})[name] = factory
        return factory

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def available(capability: str) -> list[str]:
    """Registered backend names for a capability."""
    _load_builtins()
    return sorted(_REGISTRY.get(capability, {}))


def create(capability: str, settings: dict[str, Any]) -> Any:
    """Build the backend named by `settings['backend']` (not yet loaded). `settings['module']`: a module of your
    own to import first, whose backends `register` themselves (imported in worker processes too)."""
    _load_builtins()
    if settings.get("module"):
        try:
            importlib.import_module(str(settings["module"]))
        except ImportError as error:
            raise InputError(f"{capability}.module: cannot import {settings['module']!r} ({error})") from None
    name = settings.get("backend")
    table = _REGISTRY.get(capability, {})
    if name not in table:
        raise InputError(f"unknown {capability} backend {name!r}; available: {', '.join(sorted(table))}")
    return table[name](settings)
