"""What every stage works on: the run directory, its plan, manifest, config and options."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import backends
from .errors import InputError
from .manifest import Manifest
from .progress import Reporter
from .rundir import RunDir
from .schema import Plan, load_plan

log = logging.getLogger("storyboard")


@dataclass
class StageResult:
    """What a stage did: beats generated, kept, failed; seconds; model loads."""

    stage: str
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    loads: int = 0

    @property
    def up_to_date(self) -> bool:
        return not self.done and not self.failed


class BackendPool:
    """Backends built once and loaded at most once per stage, shared by every run of a batch.

    `loaded()` loads on first use; with `hold=True` (batches) the model stays loaded until
    `release()` at the end of the stage, so the next run's beats reuse it."""

    def __init__(self, config: dict[str, Any], hold: bool = False) -> None:
        self.config = config
        self.hold = hold
        self.loads: Counter[str] = Counter()
        self._made: dict[str, Any] = {}
        self._open: dict[str, int] = {}

    def get(self, capability: str) -> Any:
        """The configured backend (built, not loaded)."""
        if capability not in self._made:
            self._made[capability] = backends.create(capability, self.config.get(capability, {}))
        return self._made[capability]

    @contextlib.contextmanager
    def loaded(self, capability: str, calls: Counter[str]) -> Iterator[Any]:
        """The backend with its model loaded (loading it only if it is not already)."""
        backend = self.get(capability)
        if capability not in self._open:
            started = time.monotonic()
            backend.__enter__()
            self._open[capability] = 0
            self.loads[capability] += 1
            calls[f"{capability}.load"] += 1
            log.info("%s: %s loaded in %.1f s", capability, backend.name, time.monotonic() - started)
        self._open[capability] += 1
        try:
            yield backend
        finally:
            self._open[capability] -= 1
            if not self.hold:
                self._close(capability)

    def _close(self, capability: str) -> None:
        if capability in self._open and self._open[capability] == 0:
            del self._open[capability]
            self._made[capability].__exit__(None, None, None)

    def release(self) -> None:
        """Free every loaded model (end of a batch stage)."""
        for capability in list(self._open):
            self._close(capability)


@dataclass
class RunContext:
    """One run directory opened for work (the caller holds its lock)."""

    rd: RunDir
    plan: Plan
    manifest: Manifest
    config: dict[str, Any]
    reporter: Reporter = field(default_factory=Reporter)
    force: set[int] = field(default_factory=set)
    keep_going: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    preflight: Callable[[RunContext], None] | None = None
    pool: BackendPool | None = None
    workers: Any = None  # distribute.Workers: beats made on several GPUs (`--gpus`) or Ray workers (`--ray`)
    _checked: bool = False

    def __post_init__(self) -> None:
        if self.pool is None:
            self.pool = BackendPool(self.config)

    def ready_for_work(self) -> None:
        """Run the preflight once, just before the first expensive step (an up-to-date run skips it)."""
        if not self._checked and self.preflight is not None:
            self.preflight(self)
        self._checked = True

    @classmethod
    def open(cls, root: Path, config: dict[str, Any], **options: Any) -> RunContext:
        """Read plan.json and run.json of `root` (validated)."""
        rd = RunDir(root)
        plan = load_plan(rd.plan)
        manifest = Manifest.load(rd.manifest)
        return cls(rd=rd, plan=plan, manifest=manifest, config=config, **options)

    def backend(self, capability: str) -> Any:
        """The configured backend for a capability (built once; not loaded)."""
        assert self.pool is not None
        return self.pool.get(capability)

    def loaded(self, capability: str) -> contextlib.AbstractContextManager[Any]:
        """The backend with its model loaded, once per stage (per batch stage when pooled)."""
        assert self.pool is not None
        return self.pool.loaded(capability, self.calls)

    def seed(self, number: int, salt: int = 0) -> int:
        """Per-beat seed: the plan seed, the beat, forced takes and judge redraws."""
        text = f"{self.plan.seed}:{number}:{self.manifest.take(number)}:{salt}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF

    def check_beat_numbers(self, numbers: list[int], option: str) -> list[int]:
        """InputError naming the valid beats if any number is out of range."""
        valid = self.plan.beat_numbers
        bad = [n for n in numbers if n not in valid]
        if bad:
            raise InputError(f"{option}: no beat {', '.join(map(str, bad))}; valid beats are 0-{valid[-1]} (0 is the hook)")
        return numbers


def parse_beat_list(text: str, last: int, option: str = "--regen-beats") -> set[int] | None:
    """`5,7` / `all` / `none` → beat numbers; None means render only."""
    value = text.strip().lower()
    if value == "none":
        return None
    if value == "all":
        return set(range(last + 1))
    numbers: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        if "-" in part[1:]:
            lo, _, hi = part.partition("-")
            ok = lo.isdigit() and hi.isdigit()
            chunk = set(range(int(lo), int(hi) + 1)) if ok else set()
        else:
            ok = part.isdigit()
            chunk = {int(part)} if ok else set()
        if not ok:
            raise InputError(f"{option}: {part!r} is not a beat number; use e.g. 5,7 or 2-4, all, none; valid beats are 0-{last}")
        numbers |= chunk
    bad = sorted(n for n in numbers if n > last)
    if bad:
        raise InputError(f"{option}: no beat {', '.join(map(str, bad))}; valid beats are 0-{last} (0 is the hook)")
    return numbers
