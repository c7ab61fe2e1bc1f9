"""Loading the next stage's models while the current stage works (on a GPU with room for both).

A stage's model load (seconds for a 12B model) otherwise sits between two stages with the GPU idle. Once the
current stage has loaded its own model, the next stage's backends load, each on a thread (`BackendPool.load_ahead`);
the video backend also encodes its prompts there, and once the voices have loaded the lines are voiced and
checked (speech depends on the plan only). Weights reach the GPU through the pinned stager, which does not
stall the current stage's kernels (BENCHMARKS.md). Config, top level:

    load_ahead: auto        # auto: only when the next models' weights plus the headroom fit the GPU's free memory
                            # on: always (also on the CPU; tests), off: never
    load_ahead_headroom_gib: 8   # room kept for the current stage's activations
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError

log = logging.getLogger("storyboard")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf")
Job = tuple[str, "Callable[[Any], None] | None"]


def mode(config: dict[str, Any]) -> str:
    value = config.get("load_ahead", "auto")
    value = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else str(value).lower()
    if value not in ("auto", "on", "off"):
        raise InputError(f"load_ahead: {value!r}; choose auto, on or off")
    return value


def jobs_for(stage: str, config: dict[str, Any], ctx: Any = None, pool: Any = None, distributed: frozenset[str] = frozenset()) -> list[Job]:
    """What `stage` loads, as (capability, then-prepare) pairs, but capabilities whose work goes to workers
    (`distributed`); with the run (`ctx`) and its pool, the video stage also voices its pending lines ahead (they
    depend on the plan only) and encodes its prompts."""
    if stage == "visual":
        jobs: list[Job] = [("image", None)]
    elif stage == "judge":
        jobs = [("judge", None)]
    elif stage == "video":
        jobs = _video_jobs(config, ctx, pool)
    else:
        jobs = []
    return [(cap, then) for cap, then in jobs if cap not in distributed and not (cap == "work:speech" and "tts" in distributed)]


def _video_jobs(config: dict[str, Any], ctx: Any, pool: Any) -> list[Job]:
    jobs: list[Job] = [("tts", None)]
    qa_on = str(config.get("qa", {}).get("backend", "none")) != "none"
    if qa_on:
        jobs.append(("qa", None))
    prepare = None
    if ctx is not None and pool is not None:

        def speech(_: Any) -> None:  # once the voices have loaded ahead (else the stage voices the lines itself)
            if pool.loaded_ahead("tts") and (not qa_on or pool.loaded_ahead("qa")):
                from .video import voice_ahead

                voice_ahead(ctx, pool.get("tts"), pool.get("qa") if qa_on else None)

        jobs.append(("work:speech", speech))
    if ctx is not None:
        from .video import clip_prompt

        prompts = [clip_prompt(ctx, n) for n in ctx.plan.beat_numbers]  # every beat: cheap, and none can be missing

        def prepare(backend: Any) -> None:
            if hasattr(backend, "prepare"):
                backend.prepare(prompts)

    jobs.append(("video", prepare))
    return jobs


def weights_bytes(backend: Any) -> int | None:
    """Bytes of weight files behind a backend's local model(s); 0 for backends without any; None if unknown."""
    refs = [getattr(backend, name, None) for name in ("model_ref", "edit_ref", "upsampler_ref")]
    refs = [str(ref) for ref in refs if ref]
    if not refs:
        return 0
    from .backends.hf_common import resolve_model
    from .errors import PreflightError

    total = 0
    for ref in refs:
        try:
            path = resolve_model(ref, "model")
        except PreflightError:
            return None
        files = [path] if path.is_file() else [p for p in Path(path).rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files if p.suffix in WEIGHT_SUFFIXES)
    return total


def gpu_room(device: str) -> int | None:
    """Bytes the GPU can still give: free on the device plus what this process holds cached but unused."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not (device == "auto" or device.startswith("cuda")):
        return None
    free, _ = torch.cuda.mem_get_info()
    return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


def start(pool: Any, config: dict[str, Any], stage: str, ctx: Any = None, distributed: frozenset[str] = frozenset()) -> None:
    """Load `stage`'s backends ahead on `pool`, if the config and (under auto) the GPU's free memory allow."""
    setting = mode(config)
    jobs = jobs_for(stage, config, ctx, pool, distributed)
    if setting == "off" or not jobs:
        return
    if setting == "auto":
        sizes = [weights_bytes(pool.get(cap)) for cap, _ in jobs if not cap.startswith("work:")]
        room = gpu_room(str(config.get("device", "auto")))
        headroom = float(config.get("load_ahead_headroom_gib", 8)) * 2**30
        if room is None or any(size is None for size in sizes):
            return
        need = sum(sizes) + headroom  # type: ignore[arg-type]
        if need > room:
            log.info("%s: not loading ahead: its weights and %.0f GiB headroom need %.1f GiB, the GPU has %.1f GiB free",
                     stage, headroom / 2**30, need / 2**30, room / 2**30)
            return
    pool.load_ahead(jobs)
