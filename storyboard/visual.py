"""Stage 2, visual: one image per beat plus the hook."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .backends import ImageRequest
from .context import RunContext, StageResult
from .errors import StageError
from .keys import Inputs
from .produce import Item, generate, make_item, pending

STAGE_VERSION = 1
QUALITIES = ("draft", "final")


def beat_characters(ctx: RunContext, number: int) -> list[str]:
    """Cast ids in frame: the beat's list, else its speaker; for the hook, those its prompt names."""
    plan = ctx.plan
    if number == 0:
        return [cid for cid, m in plan.cast.items() if cid != plan.hook.narrator and m.name in plan.hook.image_prompt]
    beat = plan.beat(number)
    return beat.characters or ([beat.speaker] if beat.speaker else [])


def image_inputs(ctx: RunContext, number: int) -> Inputs:
    """Exactly what an image is drawn from (what `status --why` can name)."""
    plan = ctx.plan
    who = beat_characters(ctx, number)
    beat = None if number == 0 else plan.beat(number)
    settings = ctx.config.get("image", {})
    return {
        "stage": STAGE_VERSION,
        "backend": ctx.backend("image").identity(),
        "quality": settings.get("quality", "draft"),
        "seed": ctx.seed(number, ctx.manifest.redraws(number)),
        "type": plan.beat_type(number),
        "image_prompt": plan.hook.image_prompt if beat is None else beat.image_prompt,
        "expression": "" if beat is None else beat.expression,
        "setting": plan.setting if beat is None or not beat.setting_override else beat.setting_override,
        "cast": {cid: plan.cast[cid].appearance for cid in who},
        "style": plan.style,
        "size": [plan.width, plan.height],
    }


def image_request(ctx: RunContext, number: int, inputs: Inputs) -> ImageRequest:
    """The request a backend draws from: the beat's prompt with cast, setting and style."""
    plan = ctx.plan
    who = list(inputs["cast"])
    appearance = "; ".join(f"{plan.cast[c].name}: {a}" for c, a in inputs["cast"].items())
    parts = [inputs["image_prompt"], inputs["expression"], f"setting: {inputs['setting']}", appearance, inputs["style"]]
    return ImageRequest(
        number=number,
        beat_type=inputs["type"],
        prompt=". ".join(p for p in parts if p),
        width=plan.width,
        height=plan.height,
        seed=inputs["seed"],
        quality=inputs["quality"],
        setting=inputs["setting"],
        characters=[plan.cast[c].name for c in who],
        expression=inputs["expression"],
        caption=inputs["image_prompt"],
    )


def items(ctx: RunContext, only: list[int] | None = None) -> list[Item]:
    """Every beat image with its freshness."""
    numbers = only if only is not None else ctx.plan.beat_numbers
    return [make_item(ctx, n, ctx.rd.image(n, ctx.plan.beat_type(n)), image_inputs(ctx, n)) for n in numbers]


def check_image(path: Path, width: int, height: int) -> None:
    """The file is a readable PNG of the requested size (some pipelines snap sizes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
    except (OSError, UnidentifiedImageError) as error:
        raise StageError(f"image is not readable: {error}") from None
    if size != (width, height):
        raise StageError(f"image is {size[0]}x{size[1]}, requested {width}x{height}")


def draw_one(ctx: RunContext, backend: Any, item: Item, tmp: Path) -> dict[str, Any]:
    """Draw one beat into `tmp` and check it."""
    request = image_request(ctx, item.number, item.inputs)
    ctx.calls["image.draw"] += 1
    backend.draw(request, tmp)
    check_image(tmp, request.width, request.height)
    return {"backend": backend.name, "seed": request.seed}


def visual(ctx: RunContext, only_beat: int | None = None) -> StageResult:
    """Draw every stale or missing beat image (or just `only_beat`), loading the model once."""
    # 1. Check inputs.
    only = ctx.check_beat_numbers([only_beat], "--only-beat") if only_beat is not None else None
    quality = ctx.config.get("image", {}).get("quality", "draft")
    if quality not in QUALITIES:
        raise StageError(f"--quality {quality!r}: choose one of {', '.join(QUALITIES)}")
    result = StageResult("visual")
    started = time.monotonic()
    # 2. Compute keys; decide what is stale.
    todo = pending(ctx, items(ctx, only))
    # 3. Generate, validate, publish, record — with one model load for all beats.
    if todo:
        ctx.ready_for_work()
        load_started = time.monotonic()
        with ctx.loaded("image") as backend:
            result.loads = ctx.calls["image.load"]
            load_s = time.monotonic() - load_started
            generate(ctx, result, todo, lambda item, tmp: draw_one(ctx, backend, item, tmp), lambda item: f"beat {item.number:02d}")
        result.seconds = time.monotonic() - started
        ctx.manifest.record_stage("visual", {"load_s": round(load_s, 3), "seconds": round(result.seconds, 3), "beats": result.done})
    return result
