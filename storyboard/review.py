"""Stage 6, review: a reviewer watches final.mp4 and writes review.md with the command that fixes it."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from . import judge as judge_stage
from . import video as video_stage
from .context import RunContext
from .errors import StageError
from .keys import content_key, file_hash
from .rundir import write_json_atomic, write_text_atomic

STAGE_VERSION = 1


@dataclass
class Review:
    """A verdict, per-beat problems, and the beats to regenerate."""

    verdict: str
    summary: str
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def beats(self) -> list[int]:
        return sorted({int(p["beat"]) for p in self.problems if p.get("regenerate", True)})


def review_schema() -> dict[str, Any]:
    """What a reviewer must answer (JSON)."""
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["ship", "fix"]},
            "summary": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "object", "properties": {
                "beat": {"type": "integer"}, "problem": {"type": "string"},
                "kind": {"type": "string", "enum": ["truncated speech", "pacing", "voice/face mismatch", "off-model character", "subtitles", "other"]},
                "regenerate": {"type": "boolean"}}, "required": ["beat", "problem", "kind"]}},
        },
        "required": ["verdict", "summary", "problems"],
    }


def beat_spans(ctx: RunContext) -> list[dict[str, Any]]:
    """Where each beat sits in final.mp4 (from the render's record) and whether it speaks."""
    rendered = ctx.manifest.data.get("artifacts", {}).get("final.mp4", {}).get("inputs", {})
    durations = rendered.get("durations") or [video_stage.clip_seconds(ctx, n) for n in ctx.plan.beat_numbers]
    spans, start = [], 0.0
    for n, seconds in zip(ctx.plan.beat_numbers, durations):
        spans.append({"beat": n, "start": start, "end": start + seconds, "speaking": video_stage.speaking(ctx, n) is not None})
        start += seconds
    return spans


def plan_summary(ctx: RunContext) -> str:
    """What the reviewer needs to know: each beat's number, time span, speaker, line and intent."""
    lines = [f"Title: {ctx.plan.title}", f"Idea: {ctx.plan.idea}", "Beats (0 is the hook):"]
    for span in beat_spans(ctx):
        n, start, seconds = span["beat"], span["start"], span["end"] - span["start"]
        spoken = video_stage.speaking(ctx, n)
        beat = None if n == 0 else ctx.plan.beat(n)
        who = ctx.plan.cast[spoken[0]].name if spoken else "(silent)"
        what = spoken[1] if spoken else (beat.action if beat else "")
        lines.append(f"  beat {n} [{start:.1f}-{start + seconds:.1f} s] {ctx.plan.beat_type(n)} ({'a2v' if n == 0 else beat.renderer}) {who}: {what}")
    lines.append("Cast: " + "; ".join(f"{m.name}: {m.appearance}" for m in ctx.plan.cast.values()))
    return "\n".join(lines)


def fix_command(ctx: RunContext, beats: list[int]) -> str:
    """The exact command that regenerates `beats` of this run."""
    return f"storyboard run --dir {shlex.quote(str(ctx.rd.root))} --regen-beats {','.join(map(str, beats))}"


def write_review(ctx: RunContext, result: Review, backend: str) -> None:
    """review.json (machine) and review.md (people)."""
    beats = [b for b in result.beats if b in ctx.plan.beat_numbers]
    data = {"backend": backend, "verdict": result.verdict, "summary": result.summary, "problems": result.problems,
            "regen_beats": beats, "command": fix_command(ctx, beats) if beats else None}
    write_json_atomic(ctx.rd.root / "review.json", data)
    md = [f"# Review of {ctx.plan.title}", "", f"**Verdict:** {result.verdict}", "", result.summary, ""]
    if result.problems:
        md += ["| beat | kind | problem |", "|---|---|---|"]
        md += [f"| {p['beat']} | {p.get('kind', 'other')} | {str(p['problem']).replace('|', '/')} |" for p in result.problems]
        md.append("")
    md += (["Fix:", "", "```bash", data["command"], "```"] if beats else ["Nothing to regenerate."])
    write_text_atomic(ctx.rd.root / "review.md", "\n".join(md) + "\n")


def review(ctx: RunContext, force: bool = False) -> Review:
    """Review final.mp4 with the configured reviewer (cached by the final's bytes)."""
    # 1. Check inputs.
    if not ctx.rd.final.is_file():
        raise StageError("review: no final.mp4 yet; run `storyboard render` first")
    backend = ctx.backend("reviewer")
    key = content_key({"stage": STAGE_VERSION, "final": file_hash(ctx.rd.final), "reviewer": backend.identity()})
    cached = ctx.manifest.data.get("review", {})
    if not force and cached.get("key") == key and (ctx.rd.root / "review.md").is_file():
        data = json.loads((ctx.rd.root / "review.json").read_text(encoding="utf-8"))
        return Review(data["verdict"], data["summary"], data["problems"])
    # 2. Ask the reviewer; 3. write review.md / review.json; 4. record.
    ctx.ready_for_work()
    started = time.monotonic()
    with ctx.loaded("reviewer") as reviewer:
        ctx.calls["reviewer.call"] += 1
        answer = reviewer.review(ctx.rd.final, plan_summary(ctx), review_schema(), beat_spans(ctx))
    result = Review(str(answer.get("verdict", "fix")), str(answer.get("summary", "")), list(answer.get("problems", [])))
    flagged = judge_stage.load_verdicts(ctx)
    for number, verdict in sorted(flagged.items(), key=lambda kv: int(kv[0])):
        if verdict.get("flagged") and not any(int(p["beat"]) == int(number) for p in result.problems):
            result.problems.append({"beat": int(number), "kind": "off-model character", "problem": f"judge flagged it: {verdict.get('reason')}", "regenerate": True})
    write_review(ctx, result, backend.name)
    ctx.manifest.data["review"] = {"key": key, "seconds": round(time.monotonic() - started, 3)}
    ctx.manifest.save()
    return result
