"""Where a stage's model load and release go on one GPU, and on two GPUs loading at once (one process each).

Builds the Flux-dev architecture with random weights (bench/random_models.py; 31.1 GiB in bf16), then starts one
worker process per GPU, as `--gpus 0,1` does, and times in each, round after round (alone on GPU 0, or both at
once after a barrier):

- `from_pretrained`: diffusers' read of the checkpoint to the CPU (its tensors stay on the file's pages);
- `move`: the pinned stager's copy of every weight to the GPU (`hf_common._Stager.copy_all`);
- `load`: the product's whole `hf_common.load_pipeline`;
- `release`: dropping the pipeline (and how many of its modules outlive that), `gc.collect`, `synchronize` and `empty_cache` (`hf_common.free_memory`), each;

with these variants of the move:
- `base`: the product's;
- `populate`: a thread runs ahead of the copy lanes asking the kernel to map each weight's pages
  (madvise MADV_POPULATE_READ), so the lanes' copies take no page faults;
- `lanes4`: 4 copy lanes instead of 2;
- `overlap`: the components read one by one, largest first, each moved to the GPU while the next is read.

And the bounds: a 4 GiB copy from pinned memory to the GPU, and one CPU thread's copy of mapped checkpoint pages
into pinned memory (pages already mapped).

    python3 bench/gpu_load.py --out /tmp/sb-load --json result.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.random_models import flux, report  # noqa: E402

MADV_POPULATE_READ = 22  # Linux 5.14+
PAGE = 4096


def populate(tensors: list[Any]) -> float:
    """Map the pages under each CPU tensor (in order); seconds taken."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    started = time.perf_counter()
    for tensor in tensors:
        start = tensor.data_ptr() // PAGE * PAGE
        end = tensor.data_ptr() + tensor.numel() * tensor.element_size()
        libc.madvise(start, end - start, MADV_POPULATE_READ)
    return time.perf_counter() - started


def worker(index: int, model: str, jobs: Any, results: Any, barriers: dict[int, Any]) -> None:
    import torch

    from storyboard.backends import hf_common

    device = f"cuda:{index}"
    torch.cuda.set_device(index)
    torch.ones(1, device=device)
    stats: dict[str, float] = {}
    real_copy_all = hf_common._Stager.copy_all  # noqa: SLF001
    mode = {"variant": "base"}

    def copy_all(self, pairs):  # noqa: ANN001, ANN202
        ahead = None
        if mode["variant"] == "populate":
            ahead = threading.Thread(target=lambda: stats.__setitem__("populate", populate([p[0] for p in pairs])))
            ahead.start()
        started = time.perf_counter()
        real_copy_all(self, pairs)
        stats["move"] = time.perf_counter() - started
        stats["move_gib"] = sum(p[0].numel() * p[0].element_size() for p in pairs) / 2**30
        if ahead is not None:
            ahead.join()

    hf_common._Stager.copy_all = copy_all  # noqa: SLF001
    import diffusers

    real_fp = diffusers.DiffusionPipeline.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        started = time.perf_counter()
        out = real_fp(cls, *args, **kwargs)
        stats["from_pretrained"] = time.perf_counter() - started
        return out

    diffusers.DiffusionPipeline.from_pretrained = classmethod(from_pretrained)
    results.put((index, "ready", {}))
    while True:
        job = jobs.get()
        if job is None:
            break
        variant, keep_cache, together = job
        barrier = barriers[2 if together else 1]
        if variant == "h2d":
            results.put((index, variant, h2d(device, barrier)))
            continue
        stats.clear()
        mode["variant"] = variant
        lanes = 4 if variant == "lanes4" else 2
        if hf_common.COPY_LANES != lanes or index not in hf_common._STAGERS:  # noqa: SLF001
            hf_common.COPY_LANES = lanes
            hf_common._STAGERS.clear()  # noqa: SLF001
            with torch.cuda.device(index):
                hf_common._STAGERS[index] = hf_common._Stager(64 * 2**20, lanes)  # noqa: SLF001
        torch.cuda.synchronize()
        reserved_before = torch.cuda.memory_reserved() / 2**30
        barrier.wait()
        started = time.perf_counter()
        if variant == "overlap":
            pipe = overlapped_load(Path(model), device, stats)
        else:
            pipe = hf_common.load_pipeline({"device": device}, model, "image", torch.bfloat16, device)
        torch.cuda.synchronize()
        stats["load"] = time.perf_counter() - started
        stats["reserved_before_gib"] = reserved_before
        barrier.wait()
        t = time.perf_counter()
        watched = hf_common.watch(pipe)
        del pipe
        stats["release_drop"] = time.perf_counter() - t
        stats["alive_after_drop"] = sum(ref() is not None for ref in watched)  # modules a reference cycle holds
        t = time.perf_counter()
        gc.collect()
        stats["release_gc"] = time.perf_counter() - t
        t = time.perf_counter()
        torch.cuda.synchronize()
        stats["release_sync"] = time.perf_counter() - t
        t = time.perf_counter()
        if not keep_cache:
            torch.cuda.empty_cache()
        stats["release_empty_cache"] = time.perf_counter() - t
        stats["release"] = time.perf_counter() - started - stats["load"]
        results.put((index, variant, {k: round(v, 3) for k, v in stats.items()}))


def overlapped_load(path: Path, device: str, stats: dict[str, float]) -> Any:
    """The pipeline read component by component, largest first, each torch module moved to the GPU (the product's
    stager) on a thread while the next one is read; then assembled from the loaded components."""
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from diffusers import DiffusionPipeline

    from storyboard.backends import hf_common

    index = {name: entry for name, entry in hf_common.model_index(path).items() if isinstance(entry, list) and entry[0]}
    weights = {name: sum(f.stat().st_size for f in (path / name).glob("*.safetensors")) for name in index}
    components: dict[str, Any] = {}
    reading = moving = 0.0
    with ThreadPoolExecutor(1) as mover:
        moves = []
        for name in sorted(index, key=lambda n: -weights[n]):
            library, class_name = index[name]
            cls = getattr(importlib.import_module(library), class_name)
            started = time.perf_counter()
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                components[name] = cls.from_pretrained(path / name, torch_dtype=torch.bfloat16)
                moves.append(mover.submit(lambda module: (time.perf_counter(), hf_common.to_device(module, device), time.perf_counter()), components[name]))
            else:
                components[name] = cls.from_pretrained(path / name)
            reading += time.perf_counter() - started
        for move in moves:
            begun, _, ended = move.result()
            moving += ended - begun
    started = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(path, **components)
    stats.update(components_read=reading, components_move=moving, assemble=time.perf_counter() - started)
    return pipe


def h2d(device: str, barrier: Any) -> dict[str, float]:
    """GiB/s of a 4 GiB copy from pinned memory to the GPU, twice."""
    import torch

    pinned = torch.empty(4 * 2**30, dtype=torch.uint8, pin_memory=True)
    gpu = torch.empty(4 * 2**30, dtype=torch.uint8, device=device)
    out = {}
    for name in ("h2d_gib_s_a", "h2d_gib_s_b"):
        barrier.wait()
        torch.cuda.synchronize()
        t = time.perf_counter()
        gpu.copy_(pinned, non_blocking=True)
        torch.cuda.synchronize()
        out[name] = round(4 / (time.perf_counter() - t), 2)
    del pinned, gpu
    torch.cuda.empty_cache()
    return out


def cpu_copy_bound(model: Path) -> dict[str, float]:
    """One thread copying the transformer's mapped pages (mapped first) into a pinned buffer, in 64 MiB slots."""
    import torch
    from safetensors import safe_open

    files = sorted((model / "transformer").glob("*.safetensors"))
    tensors = []
    for file in files:
        handle = safe_open(str(file), framework="pt")
        tensors += [handle.get_tensor(k) for k in handle.keys()]
    gib = sum(t.numel() * t.element_size() for t in tensors) / 2**30
    first = populate(tensors)
    slot = torch.empty(64 * 2**20, dtype=torch.uint8, pin_memory=True)
    t = time.perf_counter()
    for tensor in tensors:
        flat = tensor.reshape(-1).view(torch.uint8)
        for start in range(0, flat.numel(), slot.numel()):
            n = min(slot.numel(), flat.numel() - start)
            slot[:n].copy_(flat[start : start + n])
    seconds = time.perf_counter() - t
    return {"transformer_gib": round(gib, 2), "populate_s": round(first, 3), "one_thread_copy_gib_s": round(gib / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sb-load"))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--rounds",
        default="0:base;0,1:base;0,1:populate;0:populate;0:lanes4;0,1:lanes4;0,1:base;0:base;"
        "0,1:base+keep;0,1:base;0:populate;0,1:populate;0:h2d;0,1:h2d",
    )
    args = parser.parse_args()
    import torch

    model = args.out / "flux-full"
    if not (model / "model_index.json").is_file():
        flux(model, size="full", device="cuda")
        torch.cuda.empty_cache()
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "rounds": []}
    spawn = mp.get_context("spawn")
    count = min(2, torch.cuda.device_count())
    jobs = [spawn.Queue() for _ in range(count)]
    replies = spawn.Queue()
    barriers = {1: spawn.Barrier(1), 2: spawn.Barrier(count)}  # a round on GPU 0 alone, or on every GPU at once
    procs = []
    for i in range(count):
        procs.append(spawn.Process(target=worker, args=(i, str(model), jobs[i], replies, barriers)))
        procs[-1].start()
    for _ in range(count):
        replies.get()
    results["cpu_copy_bound"] = cpu_copy_bound(model)
    print("cpu copy bound:", results["cpu_copy_bound"], flush=True)
    for entry in args.rounds.split(";"):
        gpus, _, variant = entry.partition(":")
        variant, _, keep = variant.partition("+")
        on = [int(g) for g in gpus.split(",") if int(g) < count]
        for g in on:
            jobs[g].put((variant, keep == "keep", len(on) > 1))
        row = {"gpus": gpus, "variant": variant + ("+keep" if keep else ""), "per_gpu": {}}
        for _ in on:
            index, _, stats = replies.get()
            row["per_gpu"][index] = stats
        results["rounds"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    for q in jobs:
        q.put(None)
    for p in procs:
        p.join()
    report(results, args.json)


if __name__ == "__main__":
    main()
