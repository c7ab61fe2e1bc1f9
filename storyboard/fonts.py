"""Choosing a font that covers every glyph of the text (shipped fonts first, then fontconfig)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import PreflightError
from .resources import assets_dir

_FONT_SUFFIXES = {".ttf", ".otf", ".ttc"}


@dataclass(frozen=True)
class FontChoice:
    """A font file and the family name libass will look it up by."""

    path: Path
    family: str


def _preference(path: Path) -> tuple[int, str]:
    name = path.name.lower()
    score = 0 if "bold" in name else 1
    score += 0 if "sans" in name else 2
    score += 4 if any(bad in name for bad in ("mono", "serif", "italic", "oblique", "light", "condensed")) else 0
    return score, name


@functools.lru_cache(maxsize=1)
def font_candidates() -> tuple[Path, ...]:
    """Shipped fonts, then system fonts via fontconfig, best-looking first."""
    shipped = sorted(p for p in (assets_dir() / "fonts").glob("*") if p.suffix.lower() in _FONT_SUFFIXES)
    system: list[Path] = []
    if shutil.which("fc-list"):
        out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=30).stdout
        system = [Path(line) for line in out.splitlines() if Path(line).suffix.lower() in _FONT_SUFFIXES]
    return tuple(shipped + sorted(set(system), key=_preference) + bundled_fonts())


def bundled_fonts() -> list[Path]:
    """Fonts that ship as Python packages: Noto Sans CJK covers Latin, kana, hanzi and hangul."""
    try:
        import noto_cjk_sans_jp_bold

        return [Path(str(noto_cjk_sans_jp_bold.FONT_PATH))]
    except ImportError:
        return []


@functools.lru_cache(maxsize=64)
def _coverage(path: Path) -> tuple[frozenset[int], str]:
    from fontTools.ttLib import TTFont

    font = TTFont(str(path), fontNumber=0, lazy=True)
    cmap = frozenset(font.getBestCmap() or {})
    family = font["name"].getDebugName(1) or path.stem
    font.close()
    return cmap, family


def _needed(text: str) -> set[int]:
    return {ord(ch) for ch in text if not ch.isspace() and ord(ch) >= 0x20}


def find_font(text: str) -> FontChoice:
    """The first candidate covering every character of `text`; else name what is missing."""
    needed = _needed(text)
    candidates = font_candidates()
    best_missing: set[int] | None = None
    for path in candidates:
        try:
            cmap, family = _coverage(path)
        except Exception:  # noqa: BLE001 - an unreadable system font is skipped, not fatal
            continue
        missing = needed - cmap
        if not missing:
            return FontChoice(path, family)
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    if not candidates:
        raise PreflightError("no fonts found: put a .ttf in assets/fonts/ or install fontconfig fonts (e.g. fonts-dejavu)")
    chars = "".join(sorted(chr(c) for c in best_missing or needed))
    raise PreflightError(f"no installed font has glyphs for {chars!r}; add one to assets/fonts/ (e.g. Noto Sans CJK)")
