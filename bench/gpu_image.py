"""GPU benchmark of the image stage: real-architecture Flux-dev (12B) with random weights, hook + 10 beats.

One call does the whole measurement:
1. build the pipeline (transformer, T5-XXL, CLIP-L, VAE; random weights) and `save_pretrained` it;
2. plan a run with the template planner, then run the product's own `visual` stage at the `final`
   preset (base scene from text, hook from text, ten beats as img2img edits of the base), for
   each memory variant: bf16 everything, and fp8 weight storage + 4-bit (nf4) T5;
3. in the same process, with the same loaded pipelines, time bare pipeline calls with the same
   arguments (the floor) and compare per-beat stage times against them.

    python bench/gpu_image.py --out /tmp/sb-image --json result.json          # H100/H200
    python bench/gpu_image.py --size tiny --quality draft --out /tmp/sb-image-tiny   # CPU smoke test

The GPU box has no ffmpeg: the visual stage needs none, so the run's preflight (which checks
ffmpeg for the later stages) is switched off here and only here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.random_models import build_once, flux, report  # noqa: E402
from storyboard.context import BackendPool  # noqa: E402
from storyboard.pipeline import create_run, open_run  # noqa: E402
from storyboard.profiles import resolve_config  # noqa: E402
from storyboard.rundir import RunLock  # noqa: E402
from storyboard.visual import visual  # noqa: E402

IDEA = "A cat who wants to be a judge"


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_calls(backend: Any, request_size: tuple[int, int], quality: str, repeats: int) -> dict[str, float]:
    """Median seconds of the pipelines called directly, with the arguments the backend uses."""
    import torch
    from PIL import Image

    from storyboard.backends.diffusers_image import FAMILIES, _accepts, pipeline_size

    family = backend.family()
    preset = backend.preset(quality, family)
    width, height = pipeline_size(*request_size, preset.get("long_side"), FAMILIES[family]["multiple"])
    prompt = "A stern cat in a judge's robe in a sunlit courtroom, cinematic vertical frame"
    base = Image.new("RGB", (width, height), (120, 90, 60))
    times: dict[str, list[float]] = {"t2i": [], "edit": []}
    for name, pipe, extra in (("t2i", backend.pipe, {}), ("edit", backend.edit_pipe, {"image": base, "strength": float(backend.settings.get("edit_strength", 0.6))})):
        kwargs = {"prompt": prompt, "prompt_2": prompt, "width": width, "height": height, "num_inference_steps": int(preset["steps"]),
                  "guidance_scale": preset.get("guidance_scale"), "max_sequence_length": 512, **extra}
        accepted = _accepts(pipe)
        kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
        for i in range(repeats):
            sync()
            started = time.perf_counter()
            pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(i)).images[0]
            sync()
            times[name].append(time.perf_counter() - started)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def variant(root: Path, model: Path, name: str, options: dict[str, Any], quality: str, repeats: int) -> dict[str, Any]:
    """Run the visual stage on a fresh copy of the run, then bare calls on the same loaded pipelines."""
    import torch

    work = root.parent / f"{root.name}-{name}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root, work)
    settings = {"backend": "diffusers", "model": str(model), "edit": "img2img", "quality": quality, **options}
    config = resolve_config("offline", {"image": settings})
    pool = BackendPool(config, hold=True)  # keep the pipelines loaded after the stage for the bare calls
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with RunLock(work):
        ctx = open_run(work, config, pool=pool)
        ctx.preflight = None  # no ffmpeg on the GPU box; the visual stage does not use it
        # Load through the pool (the stage reuses it: still one load), then bare calls before and after
        # the stage, so both sides are equally warm and clock drift shows up on both.
        with ctx.loaded("image") as backend:
            before = bare_calls(backend, (ctx.plan.width, ctx.plan.height), quality, repeats)
            started = time.perf_counter()
            visual(ctx)
            stage_s = time.perf_counter() - started
            after = bare_calls(backend, (ctx.plan.width, ctx.plan.height), quality, repeats)
        ctx.manifest.save()
    bare = {k: round((before[k] + after[k]) / 2, 3) for k in before}
    stage_peak = ctx.manifest.data["stages"]["visual"].get("peak_vram_gib")
    pool.release()
    artifacts = ctx.manifest.data["artifacts"]
    per = {rel: a["seconds"] for rel, a in artifacts.items() if rel.startswith("beats/")}
    hook = [s for r, s in per.items() if "beat_00_" in r]
    bases = [s for r, s in per.items() if "/base_" in r]
    edits = [s for r, s in per.items() if "/beat_" in r and "beat_00_" not in r]
    text = hook + bases
    figures = ctx.manifest.data["stages"]["visual"]
    return {
        "variant": name, "options": options, "stage_s": round(stage_s, 2), "load_s": figures.get("load_s"),
        "images": len(per), "loads": ctx.calls["image.load"],
        "t2i_stage_median_s": round(statistics.median(text), 3), "edit_stage_median_s": round(statistics.median(edits), 3),
        "t2i_bare_median_s": bare["t2i"], "edit_bare_median_s": bare["edit"], "bare_before": before, "bare_after": after,
        "t2i_overhead": round(statistics.median(text) / bare["t2i"] - 1, 4),
        "edit_overhead": round(statistics.median(edits) / bare["edit"] - 1, 4),
        "peak_vram_gib_stage": stage_peak, "after_load_gib": figures.get("after_load_gib"),
        "freed_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sb-image"))
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--quality", default="final")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="bf16,fp8-nf4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, build_s = build_once(args.out, f"flux-{args.size}", flux, size=args.size, device=device)
    root = create_run(IDEA, "drama10", resolve_config("offline"), args.out / "runs")
    known = {"bf16": {}, "fp8-nf4": {"fp8": True, "text_encoder_4bit": True}, "fp8": {"fp8": True}}
    results = {"gpu": gpu_name(), "size": args.size, "quality": args.quality, "build_and_save_s": round(build_s, 1), "variants": []}
    for name in args.variants.split(","):
        results["variants"].append(variant(root, model, name, known[name], args.quality, args.repeats))
        print(json.dumps(results["variants"][-1]), flush=True)
    report(results, args.json)


if __name__ == "__main__":
    main()
