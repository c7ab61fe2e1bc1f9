"""Stage 3, judge: a YES/NO verdict per beat image; failures are redrawn with a new seed."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from . import visual
from .context import RunContext, StageResult
from .errors import StageError
from .keys import content_key, file_hash
from .produce import make_item
from .rundir import atomic_path, write_json_atomic

log = logging.getLogger("storyboard")
STAGE_VERSION = 1


def judge_key(ctx: RunContext, number: int) -> str | None:
    """Key of a verdict: the image's bytes, the judge, and what the beat needs."""
    path = ctx.rd.image(number, ctx.plan.beat_type(number))
    if not path.is_file():
        return None
    needs = visual.image_inputs(ctx, number)
    return content_key({"stage": STAGE_VERSION, "judge": ctx.backend("judge").identity(), "image": file_hash(path), "needs": [needs["image_prompt"], needs["expression"], needs["cast"]]})


def load_verdicts(ctx: RunContext) -> dict[str, Any]:
    """judge.json's per-beat verdicts (empty if missing or unreadable)."""
    try:
        data = json.loads(ctx.rd.judge.read_text(encoding="utf-8"))
        return data["beats"] if isinstance(data.get("beats"), dict) else {}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def judge(ctx: RunContext) -> StageResult:
    """Judge every beat image without a current verdict; redraw NOs up to `max_retries`."""
    # 1. Check inputs: every image must exist.
    result = StageResult("judge")
    started = time.monotonic()
    max_retries = int(ctx.config.get("judge", {}).get("max_retries", 2))
    missing = [n for n in ctx.plan.beat_numbers if not ctx.rd.image(n, ctx.plan.beat_type(n)).is_file()]
    if missing:
        raise StageError(f"judge: no image for beats {missing}; run `storyboard visual` first")
    # 2. Keys: which verdicts are stale.
    verdicts = load_verdicts(ctx)
    todo = [n for n in ctx.plan.beat_numbers if verdicts.get(str(n), {}).get("key") != judge_key(ctx, n)]
    if not todo:
        return result
    ctx.ready_for_work()
    # 3. Judge (and redraw) with each model loaded once for the stage.
    image_backend = None
    with contextlib.ExitStack() as stack:
        judge_backend = stack.enter_context(ctx.loaded("judge"))
        advance = stack.enter_context(ctx.reporter.stage("judge", len(todo)))
        result.loads = ctx.calls["judge.load"]
        for number in todo:
            attempts = []
            while True:
                inputs = visual.image_inputs(ctx, number)
                path = ctx.rd.image(number, inputs["type"])
                ctx.calls["judge.call"] += 1
                verdict = judge_backend.judge(path, visual.image_request(ctx, number, inputs))
                attempts.append({"seed": inputs["seed"], "ok": verdict.ok, "reason": verdict.reason})
                user_file = (ctx.manifest.entry(ctx.rd.rel(path)) or {}).get("user")
                if verdict.ok or len(attempts) > max_retries or user_file:
                    break  # a file the user made is judged but never redrawn
                # A NO: redraw with the next seed, keep it only if it is a valid image.
                if image_backend is None:
                    image_backend = stack.enter_context(ctx.loaded("image"))
                ctx.manifest.set_redraws(number, ctx.manifest.redraws(number) + 1)
                inputs = visual.image_inputs(ctx, number)
                item = make_item(ctx, number, path, inputs)
                drawn = time.monotonic()
                with atomic_path(path) as tmp:
                    extra = visual.draw_one(ctx, image_backend, item, tmp)
                ctx.manifest.record(item.rel, path, inputs, seconds=round(time.monotonic() - drawn, 3), **extra)
            flagged = not verdict.ok
            if flagged:
                log.warning("judge: beat %d still fails after %d attempts (%s); accepted and flagged", number, len(attempts), verdict.reason)
            verdicts[str(number)] = {"key": judge_key(ctx, number), "ok": verdict.ok, "flagged": flagged, "reason": verdict.reason, "attempts": attempts}
            write_json_atomic(ctx.rd.judge, {"backend": judge_backend.identity(), "beats": verdicts})
            result.done.append(number)
            advance(f"beat {number:02d} {'ok' if verdict.ok else 'FLAGGED'}")
        figures = judge_backend.stage_figures() if hasattr(judge_backend, "stage_figures") else {}
    result.seconds = time.monotonic() - started
    ctx.manifest.record_stage("judge", {**figures, "seconds": round(result.seconds, 3), "beats": result.done})
    return result
