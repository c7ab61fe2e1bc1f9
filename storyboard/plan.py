"""Stage 1, plan: expand an idea into plan.json following a format."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from .context import BackendPool
from .errors import InputError, StageError
from .formats import load_format
from .rundir import RunDir, write_text_atomic
from .schema import Plan, parse_plan, plan_to_json

log = logging.getLogger("storyboard")


def make_plan(idea: str, format_name: str, config: dict, seed: int = 0, pool: BackendPool | None = None,
              figures: dict[str, Any] | None = None) -> Plan:
    """Ask the configured planner for a plan; invalid output is retried with the error, then reported.

    With a held `pool` (batches) the planner model stays loaded for the next idea. `figures` receives the
    stage's figures for run.json: attempts, seconds, and the backend's own (load time, tokens, peak VRAM)."""
    # 1. Check inputs.
    if not idea.strip():
        raise InputError("--idea: give a one-line idea, e.g. --idea \"a cat who wants to be a judge\"")
    fmt = load_format(format_name)
    settings = config.get("planner", {})
    attempts = int(settings.get("retries", 2)) + 1
    pool = pool or BackendPool(config)
    feedback = None
    # 2. Generate and validate, feeding the validation error back on retries.
    figures = {} if figures is None else figures
    stage_started = time.monotonic()
    with pool.loaded("planner", Counter()) as planner:
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            try:
                data = planner.plan(idea, fmt, seed, feedback=feedback)
                plan = parse_plan(data, source=f"{planner.name} planner output")
            except InputError as error:
                feedback = str(error)
                log.warning("plan: attempt %d/%d was invalid: %s", attempt, attempts, feedback)
                continue
            if len(plan.beats) != len(fmt.beats):
                feedback = f"expected {len(fmt.beats)} beats as in format {fmt.name}, got {len(plan.beats)}"
                log.warning("plan: attempt %d/%d: %s", attempt, attempts, feedback)
                continue
            log.info("plan: %s wrote %d beats in %.1f s", planner.name, len(plan.beats), time.monotonic() - started)
            own = planner.stage_figures() if hasattr(planner, "stage_figures") else {}
            figures.update(own, attempts=attempt, seconds=round(time.monotonic() - stage_started, 3))
            return plan
    raise StageError(f"plan: the {pool.get('planner').name} planner gave no valid plan in {attempts} attempts; last problem:\n{feedback}")


def write_plan(rd: RunDir, plan: Plan) -> None:
    """Publish plan.json atomically."""
    write_text_atomic(rd.plan, plan_to_json(plan))
