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
    return tuple(shipped + sorted(set(_system_fonts()), key=_preference) + bundled_fonts())


@functools.lru_cache(maxsize=1)
def _system_fonts() -> tuple[Path, ...]:
    if not shutil.which("fc-list"):
        return ()
    out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=30).stdout
    return tuple(Path(line) for line in out.splitlines() if Path(line).suffix.lower() in _FONT_SUFFIXES)


def bundled_fonts() -> list[Path]:
    """Fonts that ship as Python packages: Noto Sans CJK (Latin, kana, hanzi, hangul), then
    Noto Emoji, Noto Sans Symbols and the Noto faces of other scripts."""
    found: list[Path] = []
    try:
        import noto_cjk_sans_jp_bold

        found.append(Path(str(noto_cjk_sans_jp_bold.FONT_PATH)))
    except ImportError:
        pass
    try:
        import manimgx_fonts

        folder = Path(manimgx_fonts.__file__).parent
        found += sorted(p for p in folder.glob("*.ttf") if "Italic" not in p.name)
    except ImportError:
        pass
    return found


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


@dataclass(frozen=True)
class FontSet:
    """A primary font and the fallbacks that cover the rest of the text (libass falls back per glyph)."""

    primary: FontChoice
    fallbacks: tuple[FontChoice, ...] = ()

    @property
    def family(self) -> str:
        return self.primary.family

    @property
    def path(self) -> Path:
        return self.primary.path

    @property
    def fonts(self) -> tuple[FontChoice, ...]:
        return (self.primary, *self.fallbacks)


def _readable() -> list[tuple[Path, frozenset[int], str]]:
    table = []
    for path in font_candidates():
        try:
            cmap, family = _coverage(path)
        except Exception:  # noqa: BLE001 - an unreadable system font is skipped, not fatal
            continue
        table.append((path, cmap, family))
    if not table:
        raise PreflightError("no fonts found: put a .ttf in assets/fonts/ or install fontconfig fonts (e.g. fonts-dejavu)")
    return table


def find_fonts(text: str) -> FontSet:
    """One font covering the text if there is one; else a primary plus per-glyph fallbacks, all
    from fonts we hand to libass directly (its fallback from a fontconfig font never reaches them).
    Names the characters no font has."""
    needed = _needed(text)
    for path in font_candidates():  # cheap path: the first font that covers everything
        try:
            cmap, family = _coverage(path)
        except Exception:  # noqa: BLE001 - an unreadable system font is skipped, not fatal
            continue
        if needed <= cmap:
            return FontSet(FontChoice(path, family))
    table = _readable()
    system = set(_system_fonts())
    own = [row for row in table if row[0] not in system] or table
    primary = max(own, key=lambda row: len(needed & row[1]))  # ties keep the preferred order
    missing = needed - primary[1]
    fallbacks: list[FontChoice] = []
    while missing:
        path, cmap, family = max(own, key=lambda row: len(missing & row[1]))
        if not missing & cmap:
            chars = "".join(sorted(chr(c) for c in missing))
            raise PreflightError(f"no installed font has glyphs for {chars!r}; add a font covering them to assets/fonts/")
        fallbacks.append(FontChoice(path, family))
        missing -= cmap
    return FontSet(FontChoice(primary[0], primary[2]), tuple(fallbacks))


def find_font(text: str) -> FontChoice:
    """One font covering every character of `text`; else name what is missing."""
    fonts = find_fonts(text)
    if fonts.fallbacks:
        lacking = "".join(sorted(chr(c) for c in _needed(text) - _coverage(fonts.path)[0]))
        raise PreflightError(f"no single font has glyphs for all of {text[:40]!r}; {fonts.family} lacks {lacking!r}")
    return fonts.primary


def drawable(text: str, font: Path) -> str:
    """`text` without the characters `font` has no glyph for (for Pillow, which cannot fall back)."""
    cmap = _coverage(font)[0]
    return "".join(ch for ch in text if ch.isspace() or ord(ch) in cmap)
