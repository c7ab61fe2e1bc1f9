"""Checks that fail in seconds, before expensive work: ffmpeg, fonts, GPU, models, keys."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import PreflightError, StoryboardError
from .ffmpeg import ffmpeg_exe
from .fonts import find_fonts
from .secrets import api_key

if TYPE_CHECKING:
    from .context import RunContext

NEEDED_FILTERS = ("subtitles", "zoompan", "loudnorm", "tpad", "apad", "concat")
API_KEYS = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY")


@dataclass(frozen=True)
class Check:
    """One line of `storyboard doctor`."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@functools.lru_cache(maxsize=4)
def _ffmpeg_facts(exe: str) -> tuple[str, frozenset[str], frozenset[str]]:
    version = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    filters = subprocess.run([exe, "-hide_banner", "-filters"], capture_output=True, text=True, timeout=30).stdout
    encoders = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30).stdout
    names = frozenset(line.split()[1] for line in filters.splitlines() if len(line.split()) > 2)
    encs = frozenset(line.split()[1] for line in encoders.splitlines() if len(line.split()) > 2)
    return version, names, encs


def check_ffmpeg() -> Check:
    """ffmpeg runs and has libass, libx264 and the filters the render uses."""
    try:
        exe = ffmpeg_exe()
        version, filters, encoders = _ffmpeg_facts(exe)
    except (StoryboardError, OSError, subprocess.SubprocessError) as error:
        return Check("ffmpeg", False, str(error), "pip install imageio-ffmpeg (ships ffmpeg with libass and x264)")
    missing = [f for f in NEEDED_FILTERS if f not in filters] + [e for e in ("libx264", "aac") if e not in encoders]
    if missing:
        return Check("ffmpeg", False, f"{exe} lacks {', '.join(missing)}", "use an ffmpeg built with libass and libx264 (STORYBOARD_FFMPEG=/path)")
    return Check("ffmpeg", True, f"{version} ({exe})")


def check_font(text: str = "Storyboard 0123456789") -> Check:
    """A font covers the text that will be burned in."""
    try:
        fonts = find_fonts(text)
    except PreflightError as error:
        return Check("font", False, str(error), "add a covering .ttf/.otf to assets/fonts/")
    return Check("font", True, " + ".join(f"{f.family} ({f.path})" for f in fonts.fonts))


def check_gpu(required: bool) -> Check:
    """CUDA is there when the profile needs it."""
    if importlib.util.find_spec("torch") is None:
        return Check("gpu", not required, "torch not installed", "pip install -e '.[gpu]'" if required else "")
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("gpu", True, names)
    return Check("gpu", not required, "no CUDA device", "this profile needs a GPU; use --profile offline" if required else "")


def check_backends(config: dict[str, Any]) -> list[Check]:
    """Each configured backend exists and its models are present locally."""
    from . import backends

    checks = []
    for capability in backends.CAPABILITIES:
        settings = config.get(capability, {})
        try:
            backend = backends.create(capability, settings)
            missing = backend.missing_models() if hasattr(backend, "missing_models") else []
        except StoryboardError as error:
            checks.append(Check(capability, False, str(error), "fix the profile"))
            continue
        except ImportError as error:
            package = error.name or str(error)
            checks.append(Check(capability, False, f"{settings.get('backend', capability)}: python package {package} is not installed",
                                "pip install -e '.[gpu]'"))
            continue
        if missing:
            checks.append(Check(capability, False, f"{backend.name}: missing {', '.join(missing)}", "see the model's fetch command above"))
        else:
            ident = backend.identity()
            models = [str(ident[k]) for k in ("model", "edit_model") if ident.get(k)]
            checks.append(Check(capability, True, f"{backend.name}: {', '.join(models)} found" if models and hasattr(backend, "missing_models") else backend.name))
    return checks


def check_keys() -> Check:
    """Which API keys are set (never their values)."""
    present = [k for k in API_KEYS if api_key(k)]
    return Check("api keys", True, ", ".join(present) + " set" if present else "none set (only needed for API backends)")


def doctor(config: dict[str, Any]) -> list[Check]:
    """Everything `storyboard doctor` reports."""
    return [check_ffmpeg(), check_font(), check_gpu(config.get("device") == "cuda"), *check_backends(config), check_keys()]


def preflight(ctx: RunContext) -> None:
    """Fail before any model work if ffmpeg, a covering font or a model is missing."""
    plan = ctx.plan
    text = plan.hook.title_overlay + plan.hook.narrator_line + "".join(b.line for b in plan.beats)
    checks = [check_ffmpeg(), check_font(text), *check_backends(ctx.config)]
    if ctx.config.get("device") == "cuda":
        checks.append(check_gpu(required=True))
    tts = ctx.backend("tts")
    if hasattr(tts, "model_path"):
        for cast_id, member in plan.cast.items():
            try:
                tts.model_path(member.voice)
            except PreflightError as error:
                checks.append(Check(f"voice of {cast_id}", False, str(error), f"fix cast.{cast_id}.voice in plan.json"))
    failures = [c for c in checks if not c.ok]
    if failures:
        raise PreflightError("preflight failed:\n" + "\n".join(f"  {c.name}: {c.detail}\n    fix: {c.fix}" for c in failures))
