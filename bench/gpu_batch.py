"""GPU scale-out benchmark: a batch of 4 shorts' image stage on 1 and on 2 GPUs of one host.

Builds the Flux-dev architecture with random weights (as bench/gpu_image.py), writes a profile
that uses it, and runs the product's own `run_batch` (stage-major, `--gpus 0` then `--gpus 0,1`)
over 4 ideas for the `visual` stage: per short one base scene, the hook and ten beats (48
images). Throughput = images per second of the stage; model loads per stage are the batch
summary's counters.

    python bench/gpu_batch.py --out /tmp/sb-batch --json result.json      # a 2-GPU host

Sets run in turn (`--gpu-sets`), each GPU set either driven from this process (t) or by a worker process per GPU
(p, the product's default). Worker processes are started and warmed up once before the timed sets and kept across
them, as this process is for the t sets; every timed batch still loads its model per GPU. Speed-ups are against
the faster one-GPU set.

The GPU box has no ffmpeg; the later stages need it, so only the GPU stage runs, and the
preflight's ffmpeg check is left out here (the backend checks stay).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import storyboard.pipeline as pipeline  # noqa: E402
from bench.random_models import flux, report  # noqa: E402
from storyboard.batch import run_batch  # noqa: E402
from storyboard.distribute import GPUProcesses, StageWorker, Workers, _Child  # noqa: E402
from storyboard.preflight import check_backends  # noqa: E402
from storyboard.profiles import resolve_config  # noqa: E402

IDEAS = ["A cat who wants to be a judge", "A robot learns to bake bread", "Two pigeons run a bank", "A ghost afraid of the dark"]


class BenchWorker(StageWorker):
    """The product's worker process, plus a switch for how it loads (between timed sets, never during one)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.releases: list[dict[str, Any]] = []

    def set_loading(self, lanes: int, parallel: bool) -> None:
        """Copy lanes of the pinned stager (made here, untimed, as a process's first load makes it) and diffusers'
        parallel shard loading (HF_ENABLE_PARALLEL_LOADING)."""
        set_loading(lanes, parallel, str(self.config["device"]))

    def set_warm_always(self, always: bool) -> None:
        """Make the warm-up call after every load ahead, even with the stage already waiting (the product before
        session 25), or leave it out then (the product now)."""
        self.pool._awaited = _NeverAwaited() if always else set()  # noqa: SLF001

    def warm_figures(self) -> dict[str, float | None]:
        """The last warm-up call's seconds per capability (None: left out), then forgotten."""
        out = dict(self.pool.warm_s)
        self.pool.warm_s.clear()
        return out

    def threads(self) -> int:
        """torch's CPU threads in this process."""
        import torch

        return torch.get_num_threads()

    def release(self, capabilities: tuple[str, ...] | None = None) -> None:
        """The product's release, timed, with each `free_memory` in it: how many of the dropped modules outlived
        the drop (a reference cycle holds them) and what holds one, the full collections run and its seconds."""
        from storyboard.backends import diffusers_image, hf_common

        real = hf_common.free_memory
        frees: list[dict[str, Any]] = []

        def timed(watched: list[Any] | None = None) -> None:
            looked = time.perf_counter()  # the look at what holds a survivor is left out of the release's seconds
            survivors = [module for module in (ref() for ref in watched or []) if module is not None]
            holders = sorted({holder(r) for r in gc.get_referrers(survivors[0]) if r is not survivors}) if survivors else []
            alive = len(survivors)
            del survivors
            collections: list[int] = []

            def count(phase: str, info: dict[str, Any]) -> None:
                if phase == "start" and info["generation"] == 2:
                    collections.append(1)

            gc.callbacks.append(count)
            started = time.perf_counter()
            try:
                real(watched)
            finally:
                gc.callbacks.remove(count)
            frees.append({"watched": None if watched is None else len(watched), "alive": alive, "holders": holders,
                          "full_collections": len(collections), "s": round(time.perf_counter() - started, 3), "looking_s": started - looked})

        hf_common.free_memory = diffusers_image.free_memory = timed
        started = time.perf_counter()
        try:
            super().release(capabilities)
        finally:
            hf_common.free_memory = diffusers_image.free_memory = real
        if frees:
            looking = sum(f.pop("looking_s") for f in frees)
            self.releases.append({"s": round(time.perf_counter() - started - looking, 3), "frees": frees})

    def release_figures(self) -> list[dict[str, Any]]:
        """The timed releases since the last call."""
        out, self.releases[:] = list(self.releases), []
        return out


class _NeverAwaited(set):
    """A set that takes nothing in: no stage is ever seen waiting, so every load ahead makes its warm-up call."""

    def add(self, _: object) -> None:
        pass


def set_key(gpus: str, threads: str) -> str:
    """A set of worker processes: its GPUs and, where asked, their OMP_NUM_THREADS (`0,1:t8`)."""
    return gpus + (f":t{threads}" if threads else "")


def holder(obj: Any) -> str:
    """What kind of object holds a module: its type, and a dict's first keys (an instance's attributes)."""
    if isinstance(obj, dict):
        return "dict:" + ",".join(sorted(str(k) for k in obj)[:6])
    return type(obj).__qualname__


def set_loading(lanes: int, parallel: bool, device: str) -> None:
    import diffusers.models.modeling_utils as modeling_utils
    import torch

    from storyboard.backends import hf_common

    modeling_utils.HF_ENABLE_PARALLEL_LOADING = parallel
    hf_common.COPY_LANES = lanes
    hf_common._STAGERS.clear()  # noqa: SLF001
    if not device.startswith("cuda"):
        return
    with torch.cuda.device(torch.device(device)):
        hf_common._STAGERS[torch.cuda.current_device()] = hf_common._Stager(64 * 2**20, lanes)  # noqa: SLF001


TIMELINE: list[dict[str, Any]] = []  # this batch's calls to worker processes, as this process saw them


def record_calls() -> None:
    """Every call to a worker process (a beat, a plan, a release) with its start and end on this process's clock."""
    real = _Child.send

    def send(self, method, *args):  # noqa: ANN001, ANN002, ANN202
        row = {"device": self.device, "method": method, "start": time.monotonic()}
        future = real(self, method, *args)

        def ended(done) -> None:  # noqa: ANN001
            row["end"] = time.monotonic()
            value = None if done.exception() else done.result()
            if method in ("make", "plan") and isinstance(value, tuple) and isinstance(value[-1], dict):
                row["load_s"] = round(value[-1].get("load_s", 0.0), 3)
            TIMELINE.append(row)

        future.add_done_callback(ended)
        return future

    _Child.send = send


def timeline(t0: float) -> dict[str, Any]:
    """The batch's phases from its calls: when the beats started and ended on each GPU, and the release after."""
    rows = [{**r, "start": round(r["start"] - t0, 3), "end": round(r["end"] - t0, 3)} for r in TIMELINE]
    TIMELINE.clear()
    out: dict[str, Any] = {}
    for device in sorted({r["device"] for r in rows}):
        beats = [r for r in rows if r["device"] == device and r["method"] == "make"]
        if beats:
            out[device] = {"first_beat_start": min(r["start"] for r in beats), "first_beat_end": min(r["end"] for r in beats),
                           "last_beat_end": max(r["end"] for r in beats), "load_wait_s": max(r.get("load_s", 0) for r in beats),
                           "releases": [(r["start"], r["end"]) for r in rows if r["device"] == device and r["method"] == "release"]}
    out["calls"] = rows
    return out


def backends_only(ctx) -> None:  # noqa: ANN001 - the preflight hook's signature
    bad = [c for c in check_backends(ctx.config) if not c.ok]
    if bad:
        raise SystemExit("; ".join(f"{c.name}: {c.detail}" for c in bad))


def load_profile(model: Path, devices: int) -> dict[str, float]:
    """Where a load's seconds go, in this process: the checkpoint read to the CPU (diffusers' default, and with its
    parallel shard loading), the move to the GPU, the product's whole load, and a second GPU's copy of it."""
    import diffusers.models.modeling_utils as modeling_utils
    import torch
    from diffusers import DiffusionPipeline

    from storyboard.backends import hf_common

    out: dict[str, float] = {}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        torch.cuda.synchronize()
        started = time.perf_counter()
        value = fn()
        torch.cuda.synchronize()
        out[name] = round(time.perf_counter() - started, 3)
        print(f"load profile: {name} {out[name]} s", flush=True)
        return value

    for rep in range(2):  # side by side: the checkpoint read without and with parallel shards; the move by lanes
        for parallel in (False, True) if rep == 0 else (True, False):
            modeling_utils.HF_ENABLE_PARALLEL_LOADING = parallel
            try:
                timed(f"from_pretrained_cpu_{'parallel' if parallel else 'serial'}_{rep}",
                      lambda: DiffusionPipeline.from_pretrained(model, dtype=torch.bfloat16))
            finally:
                modeling_utils.HF_ENABLE_PARALLEL_LOADING = False
        for count in (1, 2, 4, 8) if rep == 0 else (8, 4, 2, 1):
            set_loading(count, False, "cuda:0")
            cpu = DiffusionPipeline.from_pretrained(model, dtype=torch.bfloat16)
            timed(f"to_device_lanes{count}_{rep}", lambda cpu=cpu: hf_common.to_device(cpu, "cuda:0"))
            cpu = None
            hf_common.free_memory()
    set_loading(hf_common.COPY_LANES, False, "cuda:0")
    settings = {"device": "cuda:0"}
    pipe = timed("load_pipeline", lambda: hf_common.load_pipeline(settings, str(model), "image", torch.bfloat16, "cuda:0", siblings=True))
    if devices > 1:
        twin = timed("clone_to_cuda1", lambda: hf_common.load_pipeline({"device": "cuda:1"}, str(model), "image", torch.bfloat16, "cuda:1", siblings=True))
        out["weights_gib"] = round(sum(p.numel() * p.element_size() for m in twin.components.values() if isinstance(m, torch.nn.Module)
                                       for p in m.parameters()) / 2**30, 2)
        del twin
    del pipe
    hf_common.free_memory()
    return out


CALLS: list[tuple[str, str, float]] = []  # (pipeline class, device, seconds) of every pipeline call


def time_pipeline_calls() -> None:
    """Wrap the Flux pipelines' __call__ to time each call (the GPU turn of one image) by device."""
    import functools

    import diffusers

    for name in ("FluxPipeline", "FluxImg2ImgPipeline"):
        cls = getattr(diffusers, name)
        real = cls.__call__

        def timed(self, *args, __real=real, __name=name, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return __real(self, *args, **kwargs)
            finally:
                CALLS.append((__name, str(self._execution_device), time.perf_counter() - started))

        cls.__call__ = functools.wraps(real)(timed)


def call_means() -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, list[float]]] = {}
    for name, device, seconds in CALLS:
        out.setdefault(name, {}).setdefault(device, []).append(seconds)
    CALLS.clear()
    return {name: {device: round(sum(v) / len(v), 4) for device, v in rows.items()} for name, rows in out.items()}


def delta(after: Any, before: Any) -> Any:
    """after - before, for the nested counters of a batch summary (kept workers count across batches)."""
    if isinstance(after, dict):
        return {k: delta(v, before.get(k, 0) if isinstance(before, dict) else 0) for k, v in after.items()}
    return round(after - before, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sb-batch"))
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--quality", default="draft")
    parser.add_argument("--gpu-sets", default="t0;t0,1;p0;p0,1",
                        help="sets timed in turn: GPU indices, prefixed t (every GPU driven from this process, gpu_workers: thread) "
                             "or p (a worker process per GPU, gpu_workers: process; the processes are started and warmed up once, "
                             "before the timed sets, and kept)")
    parser.add_argument("--plan-seconds", type=float, default=0.0,
                        help="each plan takes this long (an LLM planner's time; worker processes load meanwhile)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--load-profile", action="store_true", help="time the parts of a load first")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed one-short batch on every GPU first")
    args = parser.parse_args()
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / f"flux-{args.size}"
    if not (model / "model_index.json").is_file():
        flux(model, size=args.size, device="cuda" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    settings = {"name": "bench", "device": "cuda" if torch.cuda.is_available() else "cpu",
                "planner": {"backend": "slow-template", "module": "bench.slow_planner", "seconds": args.plan_seconds},
                "image": {"backend": "diffusers", "model": str(model), "edit": "img2img", "quality": args.quality},
                "judge": {"backend": "heuristic"}, "tts": {"backend": "piper"}, "video": {"backend": "kenburns"}}
    profiles = {}
    for mode in ("thread", "process"):
        profiles[mode] = args.out / f"bench-profile-{mode}.yaml"
        profiles[mode].write_text(json.dumps({**settings, "gpu_workers": mode}))
    ideas = args.out / "ideas.txt"
    ideas.write_text("\n".join(IDEAS) + "\n")
    pipeline.preflight = backends_only  # type: ignore[assignment]
    from diffusers.utils import constants

    from storyboard.backends import hf_common

    default_loading = (hf_common.COPY_LANES, bool(constants.HF_ENABLE_PARALLEL_LOADING))  # the product's, as imported

    def parse(entry: str) -> tuple[str, str, tuple[int, bool], str, str]:
        """`p0,1@4y`: worker processes on GPUs 0 and 1, 4 copy lanes, parallel shard loading on (`n` off). A `:t8`
        suffix starts the set's worker processes with OMP_NUM_THREADS=8 (torch's CPU threads each); none as the
        product starts them (this process's environment). Each such set of processes is started and warmed up on its
        own. Flags after `!` (worker processes only): `w` makes the warm-up call after every load even when the stage
        already waits, `n` has every GPU read the checkpoint instead of copying the first one's weights (both: the
        product before session 25)."""
        entry, _, flags = entry.partition("!")
        entry, _, threads = entry.partition(":t")
        gpus, _, loading = entry.partition("@")
        how = (int(loading[:-1]), loading[-1] == "y") if loading else default_loading
        return ("process" if gpus.startswith("p") else "thread", gpus.lstrip("pt"), how, threads, flags)

    sets = [parse(entry) for entry in args.gpu_sets.split(";")]
    record_calls()
    results: dict[str, Any] = {"gpus_on_host": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                               "quality": args.quality, "runs": [], "worker_start_s": {}}
    kept: dict[str, Workers] = {}  # worker processes per GPU set, started once
    user_threads = os.environ.get("OMP_NUM_THREADS")
    for gpus, threads in sorted({(g, t) for mode, g, _, t, _ in sets if mode == "process"}):
        started = time.perf_counter()
        key = set_key(gpus, threads)
        if threads:
            os.environ["OMP_NUM_THREADS"] = threads  # the spawned processes' environment
        try:
            kept[key] = GPUProcesses(resolve_config(str(profiles["process"])), [f"cuda:{g}" if g.isdigit() else g for g in gpus.split(",")],
                                     worker=BenchWorker)
        finally:
            os.environ.pop("OMP_NUM_THREADS", None)
            if user_threads is not None:
                os.environ["OMP_NUM_THREADS"] = user_threads
        kept[key].release()  # waits for every process to be up and answering (imports done)
        results["worker_start_s"][key] = round(time.perf_counter() - started, 2)
    try:
        if args.warmup:  # CUDA start and first kernel loads on every GPU and worker process, untimed
            first = args.out / "warmup.txt"
            first.write_text(IDEAS[0] + "\n")
            everyone = ",".join(sorted({g for _, gpus, _, _, _ in sets for g in gpus.split(",")}))
            shutil.rmtree(args.out / "runs-warmup", ignore_errors=True)
            if any(mode == "thread" for mode, *_ in sets):
                run_batch(first, args.out / "runs-warmup", profile=str(profiles["thread"]), gpus=everyone, stages=("visual",))
            for key, workers in kept.items():
                started = time.perf_counter()
                out = args.out / f"runs-warmup-{key.replace(',', '_').replace(':', '_')}"  # a run of its own: an existing one has nothing left to draw
                shutil.rmtree(out, ignore_errors=True)
                run_batch(first, out, profile=str(profiles["process"]), gpus=key.partition(":")[0], stages=("visual",), workers=workers)
                results["worker_start_s"][key + " warm-up batch"] = round(time.perf_counter() - started, 2)
        if args.load_profile and torch.cuda.is_available():
            results["load_profile"] = load_profile(model, torch.cuda.device_count())
        time_pipeline_calls()
        results["cpu_threads"] = {key: [c.call("threads") for c in w._children] for key, w in kept.items()}  # noqa: SLF001
        for number, (mode, gpus, loading, threads, flags) in enumerate(sets):
            warm_always = "w" in flags
            call_means()  # drop the warm-up's calls
            out = args.out / f"runs-{number}-{mode}-{gpus.replace(',', '_')}"
            shutil.rmtree(out, ignore_errors=True)
            key = set_key(gpus, threads)
            workers = kept.get(key) if mode == "process" else None
            if workers is not None:
                workers.share = "n" not in flags and len(workers._children) > 1  # noqa: SLF001
                for child in workers._children:  # noqa: SLF001
                    child.call("set_loading", *loading)
                    child.call("set_warm_always", warm_always)
                    child.call("warm_figures")  # the warm-up's and earlier sets'
                    child.call("release_figures")  # the warm-up's and earlier sets' releases
            else:
                set_loading(*loading, "cuda:0" if torch.cuda.is_available() else "cpu")
            TIMELINE.clear()
            before = {"loads": workers.loads(), "workers": workers.figures()} if workers is not None else {"loads": {}, "workers": {}}
            started, started_mono = time.perf_counter(), time.monotonic()
            before_copies = [c.call("peer_copies") for c in workers._children] if workers else []  # noqa: SLF001
            summary = run_batch(ideas, out, profile=str(profiles[mode]), gpus=gpus, stages=("visual",), workers=workers)
            seconds = time.perf_counter() - started
            images = summary["calls"].get("image.draw", 0) + summary["calls"].get("image.base", 0)
            copied = [c.call("peer_copies") for c in workers._children] if workers else []  # noqa: SLF001
            row = {"mode": mode, "gpus": key + (f"!{flags}" if flags else ""), "cpu_threads": [c.call("threads") for c in workers._children] if workers else None,  # noqa: SLF001
                   "copy_lanes": loading[0], "parallel_shards": loading[1], "status": summary["status"], "failed": summary["failed"], "seconds": round(seconds, 2),
                   "images": images, "images_per_s": round(images / seconds, 4), "loads": delta(summary["loads"], before["loads"]),
                   "workers": delta(summary.get("workers", {}), before["workers"]),
                   "plan_s": max(r["stages"].get("plan", 0) for r in summary["runs"]),  # side by side on worker processes
                   "visual_s": max(r["stages"].get("visual", 0) for r in summary["runs"]),  # the runs' stages run side by side
                   "images_per_visual_s": round(images / max(r["stages"].get("visual", 0) for r in summary["runs"]), 4),
                   "pipeline_call_s": call_means(),  # this process's calls only: empty for worker processes
                   "timeline": timeline(started_mono),
                   "releases": {c.device: c.call("release_figures") for c in workers._children} if workers else None,  # noqa: SLF001
                   "warm_s": {c.device: c.call("warm_figures") for c in workers._children} if workers else None,  # noqa: SLF001
                   "peer_copies": [a - b for a, b in zip(copied, before_copies)]}
            results["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timeline"}), flush=True)
            print(json.dumps({k: v for k, v in row["timeline"].items() if k != "calls"}), flush=True)
            if args.json:  # what is measured so far survives a call cut short
                args.json.write_text(json.dumps(results, indent=2))
    finally:
        for workers in kept.values():
            workers.close()
    for figure in ("images_per_s", "images_per_visual_s"):
        best_one = max((r[figure] for r in results["runs"] if "," not in r["gpus"]), default=0)
        for mode in ("thread", "process"):
            for key in sorted({r["gpus"] for r in results["runs"] if r["mode"] == mode and "," in r["gpus"]}):
                two = [r[figure] for r in results["runs"] if r["mode"] == mode and r["gpus"] == key]
                if best_one:
                    results.setdefault(f"speedup_{mode}_{figure}_vs_best_one_gpu", {})[key] = [round(x / best_one, 3) for x in two]
    report(results, args.json)


if __name__ == "__main__":
    main()
