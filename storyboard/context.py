"""What every stage works on: the run directory, its plan, manifest, config and options."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
_WARMING = threading.local()


def warming() -> bool:
    """True inside a backend's warm-up call (benchmarks leave those calls out of their floor)."""
    return bool(getattr(_WARMING, "on", False))


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
        self._ahead: dict[str, Future[float]] = {}
        self._work: dict[str, Future[Any]] = {}  # work done ahead (e.g. the video stage's speech)
        self._awaited: set[str] = set()  # loads ahead a stage already waits for: no warm-up call for them
        self._under_way = 0  # loads ahead started and not ended (a stage waiting for one has taken its future)
        self.warm_s: dict[str, float | None] = {}  # the last warm-up call's seconds per capability (None: left out)
        self.after_load: Callable[[], None] | None = None  # run once after the next load (the next stage's load ahead)
        self._lock = threading.RLock()
        self._made_lock = threading.Lock()

    def get(self, capability: str) -> Any:
        """The configured backend (built, not loaded)."""
        with self._made_lock:  # not the load lock: asking for a backend never waits for a load
            if capability not in self._made:
                self._made[capability] = backends.create(capability, self.config.get(capability, {}))
            return self._made[capability]

    @contextlib.contextmanager
    def loaded(self, capability: str, calls: Counter[str]) -> Iterator[Any]:
        """The backend with its model loaded (loading it only if it is not already)."""
        with self._lock:  # threads sharing this pool (two beats in flight on one GPU) load it once
            backend = self.get(capability)
            if capability in self._ahead and self._collect(capability):
                calls[f"{capability}.load"] += 1
            if capability not in self._open:
                started = time.monotonic()
                backend.__enter__()
                self._open[capability] = 0
                self.loads[capability] += 1
                calls[f"{capability}.load"] += 1
                log.info("%s: %s loaded in %.1f s", capability, backend.name, time.monotonic() - started)
            then, self.after_load = self.after_load, None
            self._open[capability] += 1
        try:
            if then is not None:
                then()
            yield backend
        finally:
            with self._lock:
                self._open[capability] -= 1
                if not self.hold:
                    self._close(capability)

    def has(self, capability: str) -> bool:
        """True when `capability` is loaded, loading ahead, or (`work:NAME`) its work is under way or done."""
        if capability.startswith("work:"):
            return capability[5:] in self._work
        return capability in self._open or capability in self._ahead

    def load_ahead(self, jobs: list[tuple[str, Callable[[Any], None] | None]], after: Iterable[str] = ()) -> None:
        """Load each (capability, then) on a thread of its own, calling `then(backend)` after its load (e.g. encode
        prompts); the next `loaded(capability)` takes it. A load that fails there is only logged: `loaded` loads
        again. A job named `work:NAME` is no load: `then(None)` runs (it may wait for loads with `loaded_ahead`),
        and `wait_work(NAME)` waits for it. With `after`, the jobs start once those loads ahead have ended."""
        todo = [(cap, then) for cap, then in jobs if not self.has(cap)]
        if not todo:
            return
        first = [self._ahead[cap] for cap in after if cap in self._ahead]

        def when_ready(job: Callable[..., Any], *args: Any) -> Any:
            wait(first)
            return job(*args)

        executor = ThreadPoolExecutor(len(todo), thread_name_prefix="load-ahead")
        for cap, then in todo:
            if cap.startswith("work:"):
                assert then is not None
                self._work[cap[5:]] = executor.submit(contextvars.copy_context().run, when_ready, then, None)
            else:
                with self._made_lock:
                    self._under_way += 1
                self._ahead[cap] = executor.submit(contextvars.copy_context().run, when_ready, self._load_one, cap, then)
        executor.shutdown(wait=False)

    def loaded_ahead(self, capability: str) -> bool:
        """Wait for `capability`'s load ahead (not taking it); True when it loaded without error."""
        future = self._ahead.get(capability)
        return future is not None and future.exception() is None

    def wait_work(self, name: str) -> None:
        """Wait for the work done ahead under `name`, if any; its failure is logged (the stage does the work again)."""
        future = self._work.pop(name, None)
        if future is None:
            return
        try:
            future.result()
        except Exception as error:  # noqa: BLE001 - the stage redoes what is still pending and reports its own error
            log.warning("%s done ahead failed (%s: %s); the stage does it now", name, type(error).__name__, error)

    def _load_one(self, capability: str, then: Callable[[Any], None] | None) -> float:
        try:
            return self._load_ahead_now(capability, then)
        finally:
            with self._made_lock:
                self._under_way -= 1

    def loads_under_way(self) -> bool:
        """True while a load ahead has not ended, whether or not a stage is waiting for it."""
        with self._made_lock:
            return self._under_way > 0

    def _load_ahead_now(self, capability: str, then: Callable[[Any], None] | None) -> float:
        backend = self.get(capability)
        started = time.monotonic()
        backend.__enter__()
        try:
            if then is not None:
                then(backend)
        except BaseException:
            with contextlib.suppress(Exception):
                backend.__exit__(None, None, None)
            raise
        warm = getattr(backend, "warm", None)
        if warm is not None and capability in self._awaited:
            # The warm-up moves the GPU kernels' loading off the stage's path; with the stage already waiting, its
            # first item loads them as soon, and the warm-up call's own work would only delay it.
            self.warm_s[capability] = None
            log.info("%s: no warm-up call, its stage is already waiting", capability)
        elif warm is not None:  # one small call: the stage's first item does not pay for loading the GPU kernels
            warm_started = time.monotonic()
            _WARMING.on = True
            try:
                warm()
            except Exception as error:  # noqa: BLE001 - only the first call gets slower
                log.warning("%s: warm-up call failed (%s: %s); the first call will be slower", capability, type(error).__name__, error)
            finally:
                _WARMING.on = False
            self.warm_s[capability] = round(time.monotonic() - warm_started, 3)
        seconds = time.monotonic() - started
        log.info("%s: %s loaded ahead in %.1f s", capability, backend.name, seconds)
        return seconds

    def loading_ahead(self) -> bool:
        """True while a load ahead is still running."""
        return any(not future.done() for future in [*self._ahead.values(), *self._work.values()])

    def _collect(self, capability: str) -> bool:
        """Wait for `capability`'s load ahead; True when it is loaded and now open."""
        future = self._ahead.pop(capability)
        self._awaited.add(capability)
        try:
            future.result()
        except Exception as error:  # noqa: BLE001 - the stage loads it again and reports its own error
            log.warning("%s: loading ahead failed (%s: %s); loading it now", capability, type(error).__name__, error)
            return False
        finally:
            self._awaited.discard(capability)
        self._open[capability] = 0
        self.loads[capability] += 1
        return True

    def wait_ahead(self) -> float:
        """Wait for every load ahead still running; the seconds waited."""
        started = time.monotonic()
        for future in [*self._ahead.values(), *self._work.values()]:
            with contextlib.suppress(Exception):
                future.result()
        return time.monotonic() - started

    def drop_ahead(self, capabilities: Iterable[str] | None = None, keep: Iterable[str] = ()) -> None:
        """Free models loaded ahead that no stage took (the stage had nothing to do, or the run stopped): those of
        `capabilities` (default all) but `keep`."""
        if capabilities is None:
            for name in list(self._work):  # work ahead writes into the run: let it end
                self.wait_work(name)
        kept = set(keep)
        chosen = list(self._ahead) if capabilities is None else [c for c in capabilities if c in self._ahead]
        for capability in [c for c in chosen if c not in kept]:
            future = self._ahead.pop(capability)
            with contextlib.suppress(Exception):
                future.result()
                self._made[capability].__exit__(None, None, None)

    def _close(self, capability: str) -> None:
        if capability in self._open and self._open[capability] == 0:
            del self._open[capability]
            self._made[capability].__exit__(None, None, None)

    def release(self, capabilities: Iterable[str] | None = None) -> None:
        """Free every loaded model (end of a batch stage), those loaded ahead too; or only those of `capabilities`."""
        self.drop_ahead(capabilities)
        for capability in list(self._open) if capabilities is None else [c for c in capabilities if c in self._open]:
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
    made_ahead: set[str] = field(default_factory=set)  # artifacts (run-relative) made ahead of their stage in this run
    on_made: Callable[[str, int], None] | None = None  # told (run-relative path, beat) of each artifact a stage publishes
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
