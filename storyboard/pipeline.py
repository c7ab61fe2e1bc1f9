"""`storyboard run`: plan → visual → judge → video → render on one run directory."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import ahead
from . import render as render_stage
from .context import BackendPool, RunContext, StageResult, parse_beat_list
from .distribute import Workers, make_workers
from .errors import InputError, StageError
from .formats import load_format
from .judge import judge
from .manifest import Manifest
from .plan import make_plan, write_plan
from .preflight import preflight
from .profiles import resolve_config
from .progress import Reporter
from .render import render
from .review import review
from .rundir import RunDir, RunLock, run_name
from .video import video
from .visual import visual

log = logging.getLogger("storyboard")
STAGES = ("visual", "judge", "video", "render")
CURRENT_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("storyboard_run", default=None)


@dataclass
class RunSummary:
    """What `run` did, for people and for `--json`."""

    run_dir: str
    status: str = "ok"
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    final: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def create_run(idea: str, format_name: str, config: dict[str, Any], out: Path, seed: int = 0, pool: BackendPool | None = None,
               workers: Workers | None = None) -> Path:
    """Plan a new idea under `out` (or reuse today's run of the same idea); returns its directory. The plan is made
    on a worker where the workers take plans (worker processes: a batch's plans side by side, one per GPU)."""
    load_format(format_name)  # unknown or broken format: fail before any directory exists
    root = out / run_name(idea)
    if (root / "plan.json").is_file():
        log.info("plan: %s already has a plan; resuming", root)
        return root
    figures: dict[str, Any] = {}
    if workers is not None and "planner" in workers.distributes:
        plan, figures = workers.plan(idea, format_name, seed)
    else:
        plan = make_plan(idea, format_name, config, seed, pool, figures)
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root):
        if not (root / "plan.json").is_file():
            write_plan(RunDir(root), plan)
            Manifest.load(root / "run.json").record_stage("plan", figures)
    return root


def saved_profile(root: Path) -> str | None:
    """The profile a run directory was last run with."""
    manifest = Manifest.load(root / "run.json")
    return manifest.data.get("config", {}).get("profile")


def open_run(root: Path, config: dict[str, Any], *, reporter: Reporter | None = None, keep_going: bool = False,
             pool: BackendPool | None = None, workers: Workers | None = None) -> RunContext:
    """Open a run directory for work (call with its lock held): clean leftovers, read plan and manifest."""
    rd = RunDir(root)
    rd.ensure()
    for leftover in rd.clean_temporaries():
        log.info("removed leftover temporary file %s", leftover.name)
    ctx = RunContext.open(root, config, reporter=reporter or Reporter(), keep_going=keep_going, preflight=preflight, pool=pool, workers=workers)
    ctx.manifest.data["config"] = config
    return ctx


def stage_runner(ctx: RunContext, name: str, *, force_render: bool = False, only_beat: int | None = None,
                 check_failures: bool = True) -> StageResult:
    """Run one stage; with `check_failures`, beats that failed (under --keep-going) fail the stage."""
    if name == "visual":
        result = visual(ctx, only_beat=only_beat)
    elif name == "judge":
        result = judge(ctx)
    elif name == "video":
        result = video(ctx)
    elif name == "render":
        result = render(ctx, force=force_render)
    elif name == "review":
        result = StageResult("review")  # writes review.md; it makes no beat artifacts
        review(ctx, force=force_render)
    else:
        raise InputError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if check_failures and result.failed:
        raise StageError(f"{name}: beats failed: " + "; ".join(f"{n}: {why}" for n, why in sorted(result.failed.items())))
    return result


@contextlib.contextmanager
def run_log(rd: RunDir) -> Iterator[Path]:
    """Copy this process's storyboard log lines into logs/<time>-<pid>.log of the run."""
    rd.logs.mkdir(parents=True, exist_ok=True)
    path = rd.logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    # Runs of a batch can work side by side in threads: each log takes only its own run's lines.
    token = CURRENT_RUN.set(str(rd.root))
    handler.addFilter(lambda record, root=str(rd.root): CURRENT_RUN.get() == root)
    logger = logging.getLogger("storyboard")
    logger.addHandler(handler)
    level = logger.level
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        CURRENT_RUN.reset(token)
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def run_stages(
    root: Path,
    config: dict[str, Any],
    *,
    regen: str | None = None,
    keep_going: bool = False,
    reporter: Reporter | None = None,
    stages: tuple[str, ...] = STAGES,
    only_beat: int | None = None,
    workers: Workers | None = None,
    pool: BackendPool | None = None,
    then: tuple[str, ...] = (),
) -> RunSummary:
    """Run `stages` on an existing run directory under its lock (beats on `workers` when given). Each stage's
    successors, then `then`, load their models ahead when there is room (ahead.py); what `then` loaded
    ahead stays in `pool` for the caller's next call; work done ahead (the video stage's speech, voiced while the judge
    works) ends before this returns, under the run's lock."""
    started = time.monotonic()
    summary = RunSummary(run_dir=str(root))
    if not root.is_dir():
        raise InputError(f"{root}: no such run directory")
    ahead.mode(config)  # a bad setting fails here, not on the thread that loads ahead
    with RunLock(root), run_log(RunDir(root)):
        ctx = open_run(root, config, reporter=reporter, keep_going=keep_going, pool=pool, workers=workers)
        assert ctx.pool is not None
        distributed = frozenset(workers.distributes) if workers is not None else frozenset()
        order = (*stages, *then)
        kept: list[str] = []
        force_render = False
        if regen:
            beats = parse_beat_list(regen, len(ctx.plan.beats))
            if beats is None:
                stages, force_render = tuple(s for s in stages if s in ("render", "review")) or ("render",), True
            else:
                ctx.force = beats
                for number in sorted(beats):
                    ctx.manifest.bump_take(number)
                force_render = True
        ctx.manifest.save()
        results: list[StageResult] = []
        try:
            for i, name in enumerate(stages):
                if order[i + 1 :] and not ctx.pool.hold:  # once this stage has its model: the next stages', on threads
                    ctx.pool.after_load = functools.partial(ahead.start, ctx.pool, config, order[i + 1 :], ctx, distributed)
                segments = render_ahead(ctx, config) if name == "video" and order[i + 1 : i + 2] == ("render",) else None
                try:
                    result = stage_runner(ctx, name, force_render=force_render, only_beat=only_beat, check_failures=False)
                finally:
                    ctx.pool.after_load = ctx.on_made = None
                    if segments is not None:
                        segments.close()
                    ctx.pool.drop_ahead([cap for cap, _ in ahead.jobs_for(name, config)])  # loaded ahead, not taken
                    if workers is not None:
                        workers.release()  # the next stage's model needs the GPU
                results.append(result)
                summary.stages[name] = {"done": sorted(result.done), "failed": result.failed, "seconds": round(result.seconds, 3), "loads": result.loads}
                if result.failed:
                    raise StageError(f"{name}: beats failed: " + "; ".join(f"{n}: {why}" for n, why in sorted(result.failed.items())))
            kept = [cap for stage in then[: ahead.depth(config)] for cap, _ in ahead.jobs_for(stage, config)]
        finally:
            ctx.pool.drop_ahead(keep=kept)
            summary.calls = dict(ctx.calls)
            summary.seconds = round(time.monotonic() - started, 3)
        if RunDir(root).final.is_file():
            summary.final = str(RunDir(root).final)
        if all(r.up_to_date for r in results):
            summary.status = "up to date"
    return summary


def render_ahead(ctx: RunContext, config: dict[str, Any]) -> Any:
    """While the video stage works, each new clip's segment is encoded for the render (not with load_ahead off, nor
    in a batch, whose render runs after every run's video stage); None when not."""
    if ahead.mode(config) == "off" or ctx.pool is None or ctx.pool.hold:
        return None
    ctx.on_made = render_stage.RenderAhead(ctx)
    return ctx.on_made


def run(
    idea: str | None = None,
    directory: Path | None = None,
    *,
    format_name: str = "drama10",
    profile: str | None = None,
    out: Path = Path("outputs"),
    regen: str | None = None,
    keep_going: bool = False,
    seed: int = 0,
    overrides: dict[str, dict[str, Any]] | None = None,
    reporter: Reporter | None = None,
    with_review: bool = False,
    ray: str | None = None,
    gpus: str | None = None,
    with_judge: bool = True,
) -> RunSummary:
    """The whole pipeline for a new idea (`idea`) or an existing run (`directory`); `ray`/`gpus` spread the beats."""
    if (idea is None) == (directory is None):
        raise InputError("give exactly one of --idea or --dir")
    if directory is not None and profile is None:
        profile = saved_profile(directory)
    config = resolve_config(profile, overrides)
    ahead.mode(config)
    stages = tuple(s for s in STAGES if with_judge or s != "judge") + (("review",) if with_review else ())
    workers = make_workers(config, ray, gpus)
    if workers is not None and idea is not None:
        workers.load_ahead("visual")  # while the plan is written
    pool = BackendPool(config)
    distributed = frozenset(workers.distributes) if workers is not None else frozenset()
    pool.after_load = functools.partial(ahead.start, pool, config, stages, None, distributed)  # while the plan is written
    try:
        root = create_run(idea, format_name, config, out, seed, pool) if idea is not None else directory
        assert root is not None
        return run_stages(root, config, regen=regen, keep_going=keep_going, reporter=reporter, stages=stages, workers=workers, pool=pool)
    finally:
        pool.drop_ahead()
        if workers is not None:
            workers.close()
