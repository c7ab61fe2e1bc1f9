"""Subtitles: sentence splitting, greedy packing into short chunks, timing, ASS and SRT files."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_WIDTH = 28
_SENTENCE_END = re.compile(r"(?<=[。．！？])|(?<=[.!?])(?=\s|$)")
_CJK_BREAK_AFTER = "、，,；;：:"
_NO_LINE_START = "。．！？、，）」』〉》ー…"  # kinsoku: these never open a chunk


def display_width(text: str) -> int:
    """Columns a string takes: wide (CJK) characters count 2, combining marks 0."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def split_sentences(line: str) -> list[str]:
    """Split at sentence punctuation (。．！？.!?), keeping the mark with its sentence."""
    parts = [p.strip() for p in _SENTENCE_END.split(line.replace("\n", " "))]
    return [p for p in parts if p]


def _spaced(text: str) -> bool:
    return " " in text.strip()


def _pieces(sentence: str, limit: int) -> list[str]:
    """Break a too-long sentence: at spaces (never inside a word), else between CJK characters."""
    if display_width(sentence) <= limit:
        return [sentence]
    if _spaced(sentence):
        return sentence.split()
    pieces, current = [], ""
    for ch in sentence:
        if current and display_width(current + ch) > limit:
            cut = max(current.rfind(b) for b in _CJK_BREAK_AFTER) + 1
            if cut * 3 < len(current):  # no comma late enough: break between characters
                cut = len(current) - (1 if ch in _NO_LINE_START else 0)
            pieces.append(current[:cut])
            current = current[cut:]
        current += ch
    return pieces + ([current] if current else [])


def _join(a: str, b: str, sep: str | None = None) -> str:
    """Join two pieces: `sep` inside a sentence; between sentences a space unless both sides are CJK."""
    if not a:
        return b
    if sep is None:
        sep = "" if display_width(a[-1]) == 2 and display_width(b[0]) == 2 else " "
    return a + sep + b


def pack(line: str, limit: int = MAX_WIDTH) -> list[str]:
    """Greedy chunks of at most `limit` columns (a single word longer than that stays whole)."""
    chunks: list[str] = []
    for sentence in split_sentences(line):
        sep = " " if _spaced(sentence) else ""
        current = ""
        for piece in _pieces(sentence, limit):
            candidate = _join(current, piece, sep)
            if current and display_width(candidate) > limit:
                chunks.append(current)
                current = piece
            else:
                current = candidate
        if current:
            if chunks and display_width(_join(chunks[-1], current)) <= limit and chunks[-1][-1] in "。．！？.!?":
                chunks[-1] = _join(chunks[-1], current)
            else:
                chunks.append(current)
    return chunks


@dataclass(frozen=True)
class Cue:
    """One subtitle on screen."""

    start: float
    end: float
    text: str


def time_chunks(chunks: list[str], start: float, end: float) -> list[Cue]:
    """Share the speech span [start, end] across chunks by their length."""
    weights = [max(1, display_width(c)) for c in chunks]
    total = sum(weights)
    cues, t = [], start
    for chunk, weight in zip(chunks, weights):
        span = (end - start) * weight / total
        cues.append(Cue(t, t + span, chunk))
        t += span
    return cues


def _clock(seconds: float, ticks: int) -> tuple[int, int, int, int]:
    """(hours, minutes, seconds, fraction in 1/ticks s), never negative."""
    total = max(0, round(seconds * ticks))
    whole, fraction = divmod(total, ticks)
    return whole // 3600, whole // 60 % 60, whole % 60, fraction


def _ass_time(seconds: float) -> str:
    h, m, s, cs = _clock(seconds, 100)
    return f"{h}:{m:02d}:{s:02d}.{cs:02d}"


def _srt_time(seconds: float) -> str:
    h, m, s, ms = _clock(seconds, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def ass_escape(text: str) -> str:
    """Text as a literal in an ASS event: override braces and backslash codes neutralised."""
    text = text.replace("\\", "\\\u2060").replace("{", "\\{").replace("}", "\\}")
    return text.replace("\n", " ")


def wrap_title(title: str, width_px: int, font_px: int) -> list[str]:
    """Wrap the hook title to the frame (about 0.55 em per column)."""
    columns = max(8, int((width_px - 40) / (font_px * 0.55)))
    return pack(title, columns) if display_width(title) > columns else [title]


def write_ass(cues: list[Cue], title: str, title_end: float, width: int, height: int, font: str) -> str:
    """An ASS script: bottom-centre outlined subtitles and a top-pinned hook title."""
    sub_px = max(12, round(height / 24))
    title_px = max(14, round(height / 17))
    lines = [
        "[Script Info]", "ScriptType: v4.00+", f"PlayResX: {width}", f"PlayResY: {height}",
        "WrapStyle: 0", "ScaledBorderAndShadow: yes", "",
        "[V4+ Styles]",
        "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
        "Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding",
        f"Style: Sub,{font},{sub_px},&H00FFFFFF,&H00FFFFFF,&H00000000,&H64000000,-1,0,0,0,100,100,0,0,1,2,0,2,30,30,60,1",
        f"Style: Title,{font},{title_px},&H0000E1FF,&H00FFFFFF,&H00000000,&H64000000,-1,0,0,0,100,100,0,0,1,3,0,8,20,20,20,1",
        "", "[Events]", "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text",
    ]
    if title:
        text = "\\N".join(ass_escape(t) for t in wrap_title(title, width, title_px))
        lines.append(f"Dialogue: 1,{_ass_time(0)},{_ass_time(title_end)},Title,,0,0,0,,{text}")
    for cue in cues:
        lines.append(f"Dialogue: 0,{_ass_time(cue.start)},{_ass_time(cue.end)},Sub,,0,0,0,,{ass_escape(cue.text)}")
    return "\n".join(lines) + "\n"


def write_srt(cues: list[Cue]) -> str:
    """The same cues as SRT, for players and uploads."""
    blocks = [f"{i}\n{_srt_time(c.start)} --> {_srt_time(c.end)}\n{c.text}\n" for i, c in enumerate(cues, start=1)]
    return "\n".join(blocks)
