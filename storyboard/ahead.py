"""Loading the next stages' models while the current stage works (on a GPU with room for them).

A stage's model load (seconds for a 12B model) otherwise sits between two stages with the GPU idle. Once the
current stage has loaded its own model, the next stage's backends load, each on a thread (`BackendPool.load_ahead`);
the video backend also encodes its prompts there, and once the voices have loaded the lines are voiced and
checked (speech depends on the plan only). Weights reach the GPU through the pinned stager, which does not
stall the current stage's kernels (BENCHMARKS.md). Config, top level:

    load_ahead: auto        # auto: only when the next models' weights plus the headroom fit the GPU's free memory
                            # on: always (also on the CPU; tests), off: never
    load_ahead_headroom_gib: 8   # room kept for the current stage's activations
    load_ahead_stages: 2         # how many of the following stages may load ahead; a later one only once the one
                                 # before it fits too, and its loads start when that one's have ended

On an 80 GB GPU the next stage's models fit beside the current one's; on a 141 GB GPU the judge and the video stage's
models (and the voices) both load while the beats are drawn, so the short judge stage waits for nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError

log = logging.getLogger("storyboard")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf")
Job = tuple[str, "Callable[[Any], None] | None"]


def mode(config: dict[str, Any]) -> str:
    """The load_ahead setting (auto, on or off); InputError naming the field for a bad one (or a bad depth)."""
    value = config.get("load_ahead", "auto")
    value = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else str(value).lower()
    if value not in ("auto", "on", "off"):
        raise InputError(f"load_ahead: {value!r}; choose auto, on or off")
    depth(config)
    return value


def depth(config: dict[str, Any]) -> int:
    """How many of the following stages may load ahead (load_ahead_stages, default 2)."""
    value = config.get("load_ahead_stages", 2)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"load_ahead_stages: {value!r}; give a whole number of stages, 1 or more")
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
    index = torch.device(device).index if device.startswith("cuda:") else None  # a worker process's GPU, not GPU 0
    free, _ = torch.cuda.mem_get_info(index)
    return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))


def start(pool: Any, config: dict[str, Any], stages: str | Sequence[str], ctx: Any = None,
          distributed: frozenset[str] = frozenset()) -> None:
    """Load the backends of the following `stages` (the next one first) ahead on `pool`, as far as the config's depth
    and (under auto) the GPU's free memory allow: a stage is loaded ahead only when the ones before it fit too, and
    its loads start once theirs have ended (the nearer stage needs its models first)."""
    setting = mode(config)
    if setting == "off":
        return
    following = [stages] if isinstance(stages, str) else list(stages)
    headroom = float(config.get("load_ahead_headroom_gib", 8)) * 2**30
    room = gpu_room(str(config.get("device", "auto"))) if setting == "auto" else None
    if setting == "auto" and room is None:
        return
    need, before = headroom, []
    for stage in following[: depth(config)]:
        jobs = [(cap, then) for cap, then in jobs_for(stage, config, ctx, pool, distributed) if not pool.has(cap)]
        if setting == "auto":
            sizes = [weights_bytes(pool.get(cap)) for cap, _ in jobs if not cap.startswith("work:")]
            if any(size is None for size in sizes):
                return
            need += sum(sizes)  # type: ignore[arg-type]
            if need > room:  # type: ignore[operator]
                log.info("%s: not loading ahead: with what loads before it and %.0f GiB headroom it needs %.1f GiB, "
                         "the GPU has %.1f GiB free", stage, headroom / 2**30, need / 2**30, room / 2**30)  # type: ignore[operator]
                return
        if jobs:
            pool.load_ahead(jobs, after=before)
        before = [cap for cap, _ in jobs if not cap.startswith("work:")]
