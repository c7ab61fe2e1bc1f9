"""The run directory: paths, atomic publishing, the lock, and temp-file cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from hashlib import sha256
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import InputError, LockedError

_TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run; file names are zero-padded ASCII and carry the beat number."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def judge(self) -> Path:
        return self.root / "judge.json"

    @property
    def final(self) -> Path:
        return self.root / "final.mp4"

    @property
    def subs_ass(self) -> Path:
        return self.root / "subs.ass"

    @property
    def subs_srt(self) -> Path:
        return self.root / "subs.srt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def image(self, number: int, beat_type: str) -> Path:
        return self.root / "beats" / f"beat_{number:02d}_{beat_type}.png"

    def base(self, setting: str) -> Path:
        """The base scene a setting's beats are drawn as edits of."""
        import hashlib

        return self.root / "beats" / f"base_{hashlib.sha256(setting.encode('utf-8')).hexdigest()[:8]}.png"

    def audio(self, number: int) -> Path:
        return self.root / "audio" / f"beat_{number:02d}.wav"

    def clip(self, number: int, beat_type: str) -> Path:
        return self.root / "clips" / f"clip_{number:02d}_{beat_type}.mp4"

    @property
    def segments_dir(self) -> Path:
        return self.root / "render"

    def segment(self, number: int, key: str) -> Path:
        """The render's cached picture of beat `number` (subtitles and title burned in), named by its key."""
        return self.segments_dir / f"seg_{number:02d}_{key[:16]}.mp4"

    def rel(self, path: Path) -> str:
        """Path relative to the run root, as recorded in run.json."""
        return path.relative_to(self.root).as_posix()

    def ensure(self) -> None:
        """Create the run's sub-folders."""
        for sub in ("beats", "audio", "clips", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def clean_temporaries(self) -> list[Path]:
        """Remove temp files a killed process left behind (call with the lock held)."""
        removed = []
        if not self.root.is_dir():
            return removed
        for path in self.root.rglob(f".*{_TMP_MARK}*"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed


def slugify(text: str, limit: int = 40) -> str:
    """ASCII slug for run names."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "short"


def run_name(idea: str, today: date | None = None) -> str:
    """date + slug + short hash of the idea: stable for one idea on one day, never colliding."""
    day = (today or date.today()).strftime("%Y%m%d")
    digest = sha256(idea.strip().encode("utf-8")).hexdigest()[:6]
    return f"{day}-{slugify(idea)}-{digest}"


def temp_path_for(final: Path) -> Path:
    """A unique sibling name that keeps the extension (ffmpeg picks muxers by it)."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.with_name(f".{final.stem}{_TMP_MARK}{token}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path; on success it replaces `final` in one rename, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp} was not written")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(final: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(final: Path, data: object) -> None:
    """Write JSON atomically, human-readable."""
    write_text_atomic(final, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


class RunLock:
    """An exclusive lock on a run directory, released by the OS if the holder dies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = FileLock(str(root / ".lock"))
        self._info = root / ".lock.json"

    def __enter__(self) -> RunLock:
        if not self.root.is_dir():
            raise InputError(f"{self.root}: not a run directory")
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise LockedError(f"{self.root} is locked by {self._holder()}; wait for it or stop it") from None
        holder = {"pid": os.getpid(), "command": " ".join(sys.argv) or sys.executable}
        write_json_atomic(self._info, holder)
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self._info.read_text(encoding="utf-8"))
            return f"pid {info['pid']} ({info['command']})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def __exit__(self, *exc: object) -> None:
        self._info.unlink(missing_ok=True)
        self._lock.release()
