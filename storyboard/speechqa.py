"""Speech QA: is a TTS take the line, said without a long gap? Recognise it, compare, measure silences."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np

from .media import decode_audio

MIN_SIMILARITY = 0.5
MAX_GAP_S = 0.9
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def normalise(text: str) -> str:
    """Lower case, punctuation and symbols dropped, whitespace collapsed (NFKC first: full-width forms too)."""
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(ch if unicodedata.category(ch)[0] in "LN" else " " for ch in text)
    return " ".join(kept.split())


def similarity(line: str, heard: str) -> float:
    """0..1 match of what was heard against the line: by words, or by characters for CJK text."""
    a, b = normalise(line), normalise(heard)
    if not a or not b:
        return 0.0
    if _CJK.search(a):
        return SequenceMatcher(None, a.replace(" ", ""), b.replace(" ", "")).ratio()
    return SequenceMatcher(None, a.split(), b.split()).ratio()


def longest_gap(samples: np.ndarray, rate: int, threshold_db: float = -40.0) -> float:
    """Longest run of silence between the first and the last sound, in seconds (20 ms windows)."""
    window = max(1, rate // 50)
    usable = len(samples) - len(samples) % window
    if usable == 0:
        return 0.0
    rms = np.sqrt(np.mean(samples[:usable].reshape(-1, window) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms) > threshold_db)
    if loud.size < 2:
        return 0.0
    return float(np.max(np.diff(loud)) - 1) * window / rate


@dataclass
class TakeCheck:
    """What the QA found in one take."""

    seed: int
    heard: str
    similarity: float
    gap_s: float
    ok: bool

    def record(self) -> dict[str, object]:
        return {**asdict(self), "similarity": round(self.similarity, 3), "gap_s": round(self.gap_s, 3)}


def check_take(recogniser: object, wav: Path, line: str, language: str, seed: int,
               min_similarity: float = MIN_SIMILARITY, max_gap_s: float = MAX_GAP_S) -> TakeCheck:
    """Transcribe `wav` in the line's language and judge it against the line."""
    heard = recogniser.transcribe(wav, language)  # type: ignore[attr-defined]
    score = similarity(line, heard)
    gap = longest_gap(decode_audio(wav, 16000), 16000)
    return TakeCheck(seed, heard.strip(), score, gap, score >= min_similarity and gap <= max_gap_s)


def best(checks: list[TakeCheck]) -> int:
    """Index of the take to keep: a passing one, else the most similar, fewer gaps breaking ties."""
    return max(range(len(checks)), key=lambda i: (checks[i].ok, checks[i].similarity, -checks[i].gap_s))
