"""run.json: per artifact its key, inputs, hash, backend and timings; per stage its figures."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .keys import Inputs, changed_fields, content_key, file_hash
from .rundir import write_json_atomic

log = logging.getLogger("storyboard")
MANIFEST_VERSION = 1
State = Literal["fresh", "stale", "missing", "user", "adopted"]


@dataclass
class Freshness:
    """Whether an artifact on disk matches what its inputs say it should be."""

    state: State
    why: list[str] = field(default_factory=list)

    @property
    def needs_work(self) -> bool:
        return self.state in ("stale", "missing")


class Manifest:
    """In-memory run.json, saved atomically after every published artifact."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self.data: dict[str, Any] = data or {"version": MANIFEST_VERSION, "artifacts": {}, "stages": {}, "takes": {}}
        for key in ("artifacts", "stages", "takes", "redraws"):
            self.data.setdefault(key, {})
        self._lock = threading.RLock()

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read run.json; a missing or corrupt one is rebuilt from the files on disk."""
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
                raise ValueError("no artifacts table")
        except (ValueError, OSError) as error:
            log.warning("%s is unreadable (%s); rebuilding it from the files on disk", path, error)
            return cls(path)
        return cls(path, data)

    def save(self) -> None:
        with self._lock:
            write_json_atomic(self.path, self.data)

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.data["artifacts"]

    def entry(self, rel: str) -> dict[str, Any] | None:
        return self.artifacts.get(rel)

    def check(self, rel: str, path: Path, inputs: Inputs) -> Freshness:
        """Compare the file and its recorded inputs with the inputs it should have now."""
        entry = self.entry(rel)
        if not path.is_file():
            return Freshness("missing", ["no file"])
        if entry is None:
            return Freshness("adopted", ["file on disk without a manifest entry"])
        if entry.get("user") or file_hash(path) != entry.get("hash"):
            return Freshness("user", ["replaced by hand; kept (force with --regen-beats)"])
        if entry.get("key") != content_key(inputs):
            return Freshness("stale", changed_fields(entry.get("inputs", {}), inputs) or ["key"])
        return Freshness("fresh")

    def record(self, rel: str, path: Path, inputs: Inputs, **extra: Any) -> dict[str, Any]:
        """Record a published artifact (call only after the file is in place)."""
        entry = {"key": content_key(inputs), "hash": file_hash(path), "inputs": inputs, **extra}
        with self._lock:
            self.artifacts[rel] = entry
            self.save()
        return entry

    def keep_user_file(self, rel: str, path: Path, inputs: Inputs) -> None:
        """Mark a hand-made file as the user's: kept, and hashed so downstream follows it."""
        new_hash = file_hash(path)
        with self._lock:
            entry = self.artifacts.get(rel) or {"key": content_key(inputs), "inputs": inputs}
            if entry.get("user") and entry.get("hash") == new_hash:
                return
            entry.update(hash=new_hash, user=True, backend="user")
            self.artifacts[rel] = entry
            self.save()

    def forget(self, rel: str) -> None:
        with self._lock:
            if self.artifacts.pop(rel, None) is not None:
                self.save()

    def take(self, number: int) -> int:
        """How many times beat `number` was forced; part of its seed."""
        return int(self.data["takes"].get(str(number), 0))

    def bump_take(self, number: int) -> None:
        with self._lock:
            self.data["takes"][str(number)] = self.take(number) + 1

    def redraws(self, number: int) -> int:
        """How many times the judge had beat `number` redrawn; part of its image seed."""
        return int(self.data["redraws"].get(str(number), 0))

    def set_redraws(self, number: int, count: int) -> None:
        with self._lock:
            self.data["redraws"][str(number)] = count

    def record_stage(self, stage: str, figures: dict[str, Any]) -> None:
        with self._lock:
            self.data["stages"][stage] = figures
        self.save()
