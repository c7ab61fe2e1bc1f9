"""`storyboard batch`: many ideas, stage-major, so each model loads once per stage for the whole batch."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .context import BackendPool
from .distribute import Workers, make_workers
from .errors import InputError, StoryboardError
from .pipeline import STAGES, create_run, open_run, run_log, stage_runner
from .profiles import resolve_config
from .progress import Reporter
from .rundir import RunDir, RunLock

log = logging.getLogger("storyboard")


@dataclass
class BatchItem:
    """One line of the ideas file."""

    idea: str
    format: str = "drama10"
    profile: str | None = None
    seed: int = 0
    line: int = 0


@dataclass
class BatchRun:
    """What happened to one idea."""

    idea: str
    line: int
    run_dir: str | None = None
    status: str = "ok"
    stages: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    final: str | None = None


def read_ideas(path: Path, default_format: str, default_profile: str | None) -> list[BatchItem]:
    """A text file (one idea per line, `#` comments) or JSONL (idea, format, profile, seed)."""
    if not path.is_file():
        raise InputError(f"{path}: no such ideas file")
    items = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if path.suffix == ".jsonl" or text.startswith("{"):
            try:
                data = json.loads(text)
                items.append(BatchItem(str(data["idea"]), data.get("format", default_format), data.get("profile", default_profile),
                                       int(data.get("seed", 0)), number))
            except (ValueError, KeyError, TypeError) as error:
                raise InputError(f"{path}: line {number}: not a JSON object with an 'idea' ({error})") from None
        else:
            items.append(BatchItem(text, default_format, default_profile, 0, number))
    if not items:
        raise InputError(f"{path}: no ideas in it")
    return items


def run_batch(path: Path, out: Path, *, format_name: str = "drama10", profile: str | None = None,
              reporter: Reporter | None = None, ray: str | None = None, gpus: str | None = None,
              stages: tuple[str, ...] = STAGES, workers: Workers | None = None) -> dict[str, Any]:
    """Plan every idea, then run each stage across all runs with its model loaded once; keep going past failures.

    With `ray` or `gpus`, the beats of every run go to workers that each keep the stage's model
    loaded, and the runs of a stage are worked on side by side so every worker stays busy. Workers the caller
    made (`workers`: e.g. worker processes kept across batches) are used and left open, their models freed."""
    started = time.monotonic()
    reporter = reporter or Reporter()
    items = read_ideas(path, format_name, profile)
    results = [BatchRun(item.idea, item.line) for item in items]
    pools: dict[str, BackendPool] = {}
    configs: dict[str, dict[str, Any]] = {}
    own = workers is None
    if own and (ray or gpus):  # started before the plans: worker processes start up and load the first stage's models meanwhile
        profiles = {item.profile or profile for item in items}
        if len(profiles) > 1:
            raise InputError(f"{path}: with --ray/--gpus every line must use one profile (found {', '.join(map(str, profiles))})")
        workers = make_workers(resolve_config(profiles.pop()), ray, gpus)
    if workers is not None and stages:
        workers.load_ahead(stages[0])

    def pool_for(item: BatchItem) -> tuple[dict[str, Any], BackendPool]:
        key = item.profile or ""
        if key not in pools:
            configs[key] = resolve_config(item.profile)
            pools[key] = BackendPool(configs[key], hold=True)
        return configs[key], pools[key]

    calls: Counter[str] = Counter()
    counting = threading.Lock()

    def one_plan(item: BatchItem, result: BatchRun) -> None:
        t0 = time.monotonic()
        try:
            config, pool = pool_for(item)
            result.run_dir = str(create_run(item.idea, item.format, config, out, item.seed, pool, workers))
        except StoryboardError as error:
            result.status, result.error = "failed", f"plan: {error}"
            log.error("batch: line %d (%s): %s", item.line, item.idea, result.error)
        result.stages["plan"] = round(time.monotonic() - t0, 3)

    def one_stage(stage: str, item: BatchItem, result: BatchRun) -> None:
        config, pool = pool_for(item)
        t0 = time.monotonic()
        try:
            root = Path(str(result.run_dir))
            with RunLock(root), run_log(RunDir(root)):
                ctx = open_run(root, config, reporter=reporter, keep_going=True, pool=pool, workers=workers)
                try:
                    stage_runner(ctx, stage, force_render=False, only_beat=None, check_failures=True)
                finally:
                    with counting:
                        calls.update(ctx.calls)
        except StoryboardError as error:
            result.status, result.error = "failed", f"{stage}: {error}"
            log.error("batch: %s: %s", result.run_dir, result.error)
        result.stages[stage] = round(time.monotonic() - t0, 3)

    def side_by_side(job: Callable[[BatchItem, BatchRun], None], todo: list[tuple[BatchItem, BatchRun]], together: bool) -> None:
        """`job` for every (item, result): one after another, or (`together`) each on a thread so every worker stays busy."""
        if not together:
            for item, result in todo:
                job(item, result)
            return
        assert workers is not None
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as threads:
            futures = [threads.submit(contextvars.copy_context().run, job, i, r) for i, r in todo]
            try:
                for future in futures:
                    future.result()
            except BaseException:  # Ctrl-C: the other runs' work on the workers stops now, not when it is done
                workers.close(now=True)
                raise

    try:
        # 1. Plans (a failure here fails only that idea); side by side where the workers make them.
        side_by_side(one_plan, list(zip(items, results)), workers is not None and "planner" in workers.distributes)
        for pool in pools.values():
            pool.release()
        if workers is not None:
            workers.release(("planner",))  # what loads ahead for the first stage stays
        # 2. Stage-major: every run's visual, then every run's judge, ... each pool holds its model across runs.
        for stage in stages:
            todo = [(item, result) for item, result in zip(items, results) if result.status == "ok" and result.run_dir is not None]
            side_by_side(functools.partial(one_stage, stage), todo, workers is not None and stage in ("visual", "video"))
            for pool in pools.values():
                pool.release()
            if workers is not None:
                workers.release()
        worker_loads = workers.loads() if workers is not None else {}
        worker_figures = workers.figures() if workers is not None else {}
    finally:
        if workers is not None:
            workers.close() if own else workers.release()
    for result in results:
        final = Path(result.run_dir or ".") / "final.mp4"
        result.final = str(final) if result.status == "ok" and final.is_file() else None
    loads = Counter(worker_loads)
    for pool in pools.values():
        loads.update(pool.loads)
    return {
        "status": "ok" if all(r.status == "ok" for r in results) else "failed",
        "runs": [asdict(r) for r in results],
        "failed": [{"line": r.line, "idea": r.idea, "error": r.error} for r in results if r.status != "ok"],
        "loads": dict(loads),
        **({"workers": worker_figures} if worker_figures else {}),
        "calls": dict(calls),
        "seconds": round(time.monotonic() - started, 3),
    }
