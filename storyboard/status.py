"""`storyboard status`: every beat × artifact as fresh / stale / missing, and why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import judge as judge_stage
from . import render as render_stage
from . import video as video_stage
from . import visual as visual_stage
from .context import RunContext
from .errors import StageError

_REDO = ("stale", "missing")


@dataclass(frozen=True)
class Cell:
    """One artifact's state."""

    state: str
    why: str = ""


def beat_status(ctx: RunContext) -> dict[int, dict[str, Cell]]:
    """Per beat: image, judge, audio and clip states."""
    table: dict[int, dict[str, Cell]] = {n: {} for n in ctx.plan.beat_numbers}
    for item in visual_stage.items(ctx):
        table[item.number]["image"] = Cell(item.freshness.state, ", ".join(item.freshness.why))
    verdicts = judge_stage.load_verdicts(ctx)
    for n in ctx.plan.beat_numbers:
        verdict = verdicts.get(str(n))
        key = judge_stage.judge_key(ctx, n)
        if verdict is None or key is None:
            table[n]["judge"] = Cell("missing")
        elif verdict.get("key") != key:
            table[n]["judge"] = Cell("stale", "image changed")
        else:
            table[n]["judge"] = Cell("flagged" if verdict.get("flagged") else "fresh", verdict.get("reason", ""))
    for n in ctx.plan.beat_numbers:
        table[n]["audio"] = Cell("-", "silent beat")
    for item in video_stage.audio_items(ctx):
        table[item.number]["audio"] = Cell(item.freshness.state, ", ".join(item.freshness.why))
    for item in video_stage.clip_items(ctx):
        table[item.number]["clip"] = Cell(item.freshness.state, ", ".join(item.freshness.why))
    # What will be redone follows what is upstream of it.
    for row in table.values():
        image_redo = row["image"].state in _REDO
        if image_redo and row["judge"].state not in _REDO:
            row["judge"] = Cell("stale", "upstream image")
        upstream = [name for name in ("image", "audio") if row[name].state in _REDO]
        if upstream and row["clip"].state not in _REDO:
            row["clip"] = Cell("stale", "upstream " + " and ".join(upstream))
    return table


def final_status(ctx: RunContext) -> Cell:
    """final.mp4's state."""
    try:
        segments = render_stage.segments_of(ctx)
    except StageError as error:
        return Cell("missing" if not ctx.rd.final.is_file() else "stale", str(error).split("\n")[0])
    cues = render_stage.cues_of(segments)
    fonts = render_stage.fonts_of(ctx)
    inputs = render_stage.render_inputs(ctx, segments, cues, fonts)
    fresh = ctx.manifest.check(ctx.rd.rel(ctx.rd.final), ctx.rd.final, inputs)
    return Cell(fresh.state, ", ".join(fresh.why))


def status(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The whole table as data (the CLI prints it)."""
    ctx = RunContext.open(root, config)
    beats = beat_status(ctx)
    final = final_status(ctx)
    redo = sorted(n for n, row in beats.items() if row["clip"].state in _REDO)
    if redo and final.state not in _REDO:
        final = Cell("stale", f"upstream clips {redo}")
    return {
        "run_dir": str(root),
        "beats": {n: {k: {"state": c.state, "why": c.why} for k, c in row.items()} for n, row in beats.items()},
        "final": {"state": final.state, "why": final.why},
    }
