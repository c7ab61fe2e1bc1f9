"""Stage 2, visual: one image per beat plus the hook."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from .backends import ImageRequest
from .context import RunContext, StageResult
from .errors import StageError
from .keys import Inputs, file_hash
from .produce import Item, generate, local_backend, make_item, pending, producer

STAGE_VERSION = 1
QUALITIES = ("draft", "final")


def beat_characters(ctx: RunContext, number: int) -> list[str]:
    """Cast ids in frame: the beat's list, else its speaker; for the hook, those its prompt names."""
    plan = ctx.plan
    if number == 0:
        return [cid for cid, m in plan.cast.items() if cid != plan.hook.narrator and m.name in plan.hook.image_prompt]
    beat = plan.beat(number)
    return beat.characters or ([beat.speaker] if beat.speaker else [])


def uses_base(ctx: RunContext) -> bool:
    """The image backend draws beats as edits of a base scene."""
    return bool(getattr(ctx.backend("image"), "uses_base", False))


def beat_setting(ctx: RunContext, number: int) -> str:
    beat = ctx.plan.beat(number)
    return beat.setting_override or ctx.plan.setting


def base_inputs(ctx: RunContext, setting: str) -> Inputs:
    """What a base scene is drawn from: the setting, the whole on-screen cast, the style."""
    plan = ctx.plan
    cast = {cid: m.appearance for cid, m in plan.cast.items() if cid != plan.hook.narrator}
    seed = int.from_bytes(hashlib.sha256(f"{plan.seed}:base:{setting}".encode()).digest()[:4], "big") & 0x7FFFFFFF
    return {
        "stage": STAGE_VERSION,
        "backend": ctx.backend("image").identity(),
        "quality": ctx.config.get("image", {}).get("quality", "draft"),
        "seed": seed,
        "type": "base",
        "image_prompt": f"Establishing shot, everyone in frame, neutral poses: {', '.join(plan.cast[c].name for c in cast)}",
        "expression": "",
        "setting": setting,
        "cast": cast,
        "style": plan.style,
        "size": [plan.width, plan.height],
    }


def image_inputs(ctx: RunContext, number: int) -> Inputs:
    """Exactly what an image is drawn from (what `status --why` can name)."""
    plan = ctx.plan
    who = beat_characters(ctx, number)
    beat = None if number == 0 else plan.beat(number)
    settings = ctx.config.get("image", {})
    base: dict[str, str] = {}
    if beat is not None and uses_base(ctx):
        path = ctx.rd.base(beat_setting(ctx, number))
        base = {"base": file_hash(path) if path.is_file() else "missing"}
    return {
        **base,
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
    base = ctx.rd.base(inputs["setting"]) if "base" in inputs else None
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
        silent=number > 0 and plan.beat(number).renderer != "a2v",
        base=base,
    )


def base_items(ctx: RunContext, numbers: list[int]) -> list[Item]:
    """The base scenes the given beats are edits of (one per distinct setting)."""
    settings = sorted({beat_setting(ctx, n) for n in numbers if n > 0})
    return [make_item(ctx, -1, ctx.rd.base(s), base_inputs(ctx, s)) for s in settings]


def draw_base(ctx: RunContext, backend: Any, item: Item, tmp: Path) -> dict[str, Any]:
    """Draw a base scene from text (setting + whole cast)."""
    request = image_request(ctx, 0, item.inputs)
    ctx.calls["image.base"] += 1
    backend.draw(request, tmp)
    check_image(tmp, request.width, request.height)
    return {"backend": backend.name, "seed": request.seed}


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
        with local_backend(ctx, "image") as backend:
            load_s = time.monotonic() - load_started
            if uses_base(ctx):
                # Base scenes first; beats are keyed on their base's bytes, so look again afterwards.
                bases = pending(ctx, base_items(ctx, [i.number for i in todo]))
                make, workers = producer(ctx, "image.base", draw_base, backend)
                drawn = StageResult("visual")
                generate(ctx, drawn, bases, make, lambda item: f"base {item.rel}", workers=workers)
                if drawn.failed:
                    raise StageError(f"visual: the base scene failed ({'; '.join(drawn.failed.values())}); its beats cannot be drawn")
                todo = pending(ctx, items(ctx, only))
            make, workers = producer(ctx, "image", draw_one, backend)
            generate(ctx, result, todo, make, lambda item: f"beat {item.number:02d}", workers=workers)
            figures = backend.stage_figures() if hasattr(backend, "stage_figures") else {}
        result.loads = ctx.calls["image.load"]
        result.seconds = time.monotonic() - started
        ctx.manifest.record_stage("visual", {"load_s": round(load_s, 3), **figures, "seconds": round(result.seconds, 3), "beats": result.done})
    return result
