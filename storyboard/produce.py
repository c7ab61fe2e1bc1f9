"""The loop every stage shares: decide what is stale, generate it, validate, publish, record."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import RunContext, StageResult
from .errors import StageError, StoryboardError
from .ffmpeg import stop_all
from .keys import Inputs
from .manifest import Freshness
from .rundir import atomic_path

log = logging.getLogger("storyboard")


@dataclass
class Item:
    """One artifact a stage owns: where it goes, what it is made from, and its state."""

    number: int
    path: Path
    inputs: Inputs
    freshness: Freshness
    rel: str
    payload: Any = None


def make_item(ctx: RunContext, number: int, path: Path, inputs: Inputs, payload: Any = None) -> Item:
    """Build an Item, with its freshness read from the manifest."""
    rel = ctx.rd.rel(path)
    return Item(number, path, inputs, ctx.manifest.check(rel, path, inputs), rel, payload)


def pending(ctx: RunContext, items: Iterable[Item]) -> list[Item]:
    """Items to generate now; adopts orphan files and keeps the user's own files."""
    todo = []
    for item in items:
        state = item.freshness.state
        if item.number in ctx.force:
            todo.append(item)
        elif state == "adopted":
            ctx.manifest.record(item.rel, item.path, item.inputs, backend="adopted")
        elif state == "user":
            ctx.manifest.keep_user_file(item.rel, item.path, item.inputs)
        elif item.freshness.needs_work:
            todo.append(item)
    return todo


def local_backend(ctx: RunContext, capability: str) -> contextlib.AbstractContextManager[Any]:
    """The backend loaded here, or nothing when the stage's work goes to workers (`--gpus`, `--ray`)."""
    if ctx.workers is not None and capability in ctx.workers.distributes:
        return contextlib.nullcontext(None)
    return ctx.loaded(capability)


def producer(ctx: RunContext, capability: str, make: Callable[[RunContext, Any, Item, Path], dict[str, Any]],
             backend: Any) -> tuple[Callable[[Item, Path], dict[str, Any]], int]:
    """(make(item, tmp), how many at a time): on the workers, or on the loaded local backend, as many at a time as it
    says (`workers`: e.g. one item on the GPU while the one before it is encoded or saved; 0 = one per core)."""
    if backend is None and ctx.workers is not None:
        workers = ctx.workers
        return (lambda item, tmp: workers.make(capability, ctx, item, tmp)), workers.size
    return (lambda item, tmp: make(ctx, backend, item, tmp)), in_flight(backend)


def in_flight(backend: Any) -> int:
    """How many items a loaded backend takes at a time (its `workers`, default 1; 0 = one per core)."""
    return int(getattr(backend, "workers", 1)) or (os.cpu_count() or 1)


def generate(
    ctx: RunContext,
    result: StageResult,
    todo: list[Item],
    make: Callable[[Item, Path], dict[str, Any]],
    label: Callable[[Item], str],
    workers: int = 1,
) -> None:
    """Run `make(item, tmp)` per item; publish atomically and record; honour --keep-going."""
    if not todo:
        return
    ctx.ready_for_work()

    def one(item: Item) -> None:
        started = time.monotonic()
        with atomic_path(item.path) as tmp:
            extra = make(item, tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise StageError(f"{item.rel}: the backend wrote no data")
        ctx.manifest.record(item.rel, item.path, item.inputs, seconds=round(time.monotonic() - started, 3), **extra)
        if ctx.on_made is not None:
            ctx.on_made(item.rel, item.number)

    with ctx.reporter.stage(result.stage, len(todo)) as advance:
        if workers > 1:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                futures = [(item, pool.submit(contextvars.copy_context().run, one, item)) for item in todo]  # keeps the run's log
                for item, future in futures:
                    _collect(ctx, result, item, future.result, advance, label)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                stop_all()  # workers' ffmpeg children die now; their temp files are removed as they unwind
                pool.shutdown(wait=True)
                raise
            pool.shutdown(wait=True)
        else:
            for item in todo:
                _collect(ctx, result, item, lambda item=item: one(item), advance, label)


def _collect(ctx: RunContext, result: StageResult, item: Item, call: Callable[[], None], advance: Callable[[str], None], label: Callable[[Item], str]) -> None:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - one beat's failure must not lose the others
        if _caused_by_interrupt(error):
            raise KeyboardInterrupt from error
        message = str(error) if isinstance(error, StoryboardError) else f"{type(error).__name__}: {error}"
        result.failed[item.number] = message
        log.error("%s: beat %d failed: %s", result.stage, item.number, message)
        if not ctx.keep_going:
            raise StageError(f"{result.stage}: beat {item.number} failed: {message}") from None
    else:
        result.done.append(item.number)
    advance(label(item))


def _caused_by_interrupt(error: BaseException) -> bool:
    """True when Ctrl-C was masked by an error raised while unwinding (e.g. in a file's close)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__ or seen.__cause__
    return False
