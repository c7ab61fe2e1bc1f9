"""Spreading a stage's beats over several GPUs: local devices (`--gpus 0,1`) or a Ray cluster (`--ray`).

The driver keeps everything that makes a run a run: it decides what is stale, computes every
content key, publishes each file atomically and writes run.json. Workers only make files: each
holds its own loaded model for the stage (model residency) and writes the artifact to the temp
path the driver gave it, inside the run directory (a filesystem every worker sees). So a
distributed run leaves exactly the files and keys a local run leaves.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .context import BackendPool, RunContext
from .errors import InputError, StageError
from .produce import Item, in_flight

log = logging.getLogger("storyboard")


def _maker(capability: str) -> Callable[[RunContext, Any, Item, Path], dict[str, Any]]:
    """The function that makes one artifact of a capability (the same one a local run calls)."""
    from . import video, visual

    return {"image": visual.draw_one, "image.base": visual.draw_base, "tts": video.speak_one, "video": video.animate_one}[capability]


def _with_device(config: dict[str, Any], device: str) -> dict[str, Any]:
    """The config with every backend pinned to `device`."""
    pinned = {**config, "device": "cuda" if device.startswith("cuda") else config.get("device", "cpu")}
    for section, settings in config.items():
        if isinstance(settings, dict) and "backend" in settings:
            pinned[section] = {**settings, "device": device}
    return pinned


class Workers:
    """Interface: `size` workers; `make()` one artifact on a free worker; `release()` their models."""

    size = 1
    distributes = ("image", "image.base", "tts", "video")

    def make(self, capability: str, ctx: RunContext, item: Item, tmp: Path) -> dict[str, Any]:
        raise NotImplementedError

    def release(self) -> None:
        return None

    def loads(self) -> dict[str, int]:
        return {}

    def figures(self) -> dict[str, Any]:
        """Per capability and worker: beats made, seconds spent loading and making (where the workers keep them)."""
        return {}

    def close(self) -> None:
        self.release()


class LocalGPUs(Workers):
    """One backend pool per local GPU; a beat goes to the device with the fewest beats in flight, each device taking
    as many at a time as its backend does (the image and video backends: one on the GPU, one being saved)."""

    slots = 2  # the most beats in flight on one device, whatever the backend

    def __init__(self, config: dict[str, Any], devices: list[str]) -> None:
        self.size = len(devices) * self.slots
        self._pools = [(d, BackendPool(_with_device(config, d), hold=True)) for d in devices]
        self._names = [d if devices.count(d) == 1 else f"{d}#{i}" for i, d in enumerate(devices)]
        self._busy = [0] * len(devices)
        self._lock = threading.Condition()
        self._figures: dict[str, dict[str, Counter[str]]] = {}

    def _take(self, capability: str) -> int:
        limits = [min(self.slots, in_flight(pool.get(capability))) for _, pool in self._pools]
        with self._lock:
            while True:
                free = [i for i in range(len(self._pools)) if self._busy[i] < limits[i]]
                if free:
                    chosen = min(free, key=lambda i: self._busy[i])
                    self._busy[chosen] += 1
                    return chosen
                self._lock.wait()

    def make(self, capability: str, ctx: RunContext, item: Item, tmp: Path) -> dict[str, Any]:
        cap = capability.split(".")[0]
        index = self._take(cap)
        device, pool = self._pools[index]
        started = loaded = time.monotonic()
        try:
            with pool.loaded(cap, ctx.calls) as backend:
                loaded = time.monotonic()
                return {**_maker(capability)(ctx, backend, item, tmp), "device": device}
        finally:
            ended = time.monotonic()
            with self._lock:
                row = self._figures.setdefault(cap, {}).setdefault(self._names[index], Counter())
                row.update(beats=1, load_s=loaded - started, make_s=ended - loaded)
                self._busy[index] -= 1
                self._lock.notify_all()

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return {cap: {device: {k: round(v, 3) for k, v in row.items()} for device, row in rows.items()} for cap, rows in self._figures.items()}

    def release(self) -> None:
        for _, pool in self._pools:
            pool.release()

    def loads(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for _, pool in self._pools:
            total.update(pool.loads)
        return dict(total)


class StageWorker:
    """A Ray actor: keeps each stage's model loaded across the beats it receives."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.getLogger("storyboard").setLevel(logging.INFO)
        self.config = config
        self.pool = BackendPool(config, hold=True)

    def make(self, capability: str, root: str, number: int, rel: str, inputs: dict[str, Any], tmp: str) -> tuple[dict[str, Any], dict[str, int]]:
        from .manifest import Freshness

        ctx = RunContext.open(Path(root), self.config, pool=self.pool)
        item = Item(number, ctx.rd.root / rel, inputs, Freshness("missing"), rel)
        with self.pool.loaded(capability.split(".")[0], ctx.calls) as backend:
            extra = _maker(capability)(ctx, backend, item, Path(tmp))
        return extra, dict(ctx.calls)

    def release(self) -> None:
        self.pool.release()

    def loads(self) -> dict[str, int]:
        return dict(self.pool.loads)


class RayWorkers(Workers):
    """`size` Ray actors, one GPU each when the cluster has GPUs (`gpus_per_worker`), else one CPU each."""

    def __init__(self, config: dict[str, Any], address: str, size: int | None = None, gpus_per_worker: float | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("--ray needs Ray: pip install 'ray>=2.40' (or the project's [gpu] extra)") from None
        self.ray = ray
        if not ray.is_initialized():
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            elif address == "auto":
                try:
                    ray.init(address="auto", log_to_driver=False)
                except ConnectionError:
                    log.info("ray: no running cluster found; starting a local one")
                    ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        per = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpus else 0.0)
        self.size = size or (int(gpus / per) if per else max(1, int(resources.get("CPU", 1)) - 1))
        if self.size < 1:
            raise InputError(f"--ray {address}: the cluster has {gpus} GPU(s); no worker fits")
        actor = ray.remote(StageWorker).options(num_gpus=per, num_cpus=1 if not per else 0)
        self.actors = [actor.remote(config) for _ in range(self.size)]
        self._free: queue.Queue[Any] = queue.Queue()
        for a in self.actors:
            self._free.put(a)
        log.info("ray: %d worker(s), %s GPU each", self.size, per)

    def make(self, capability: str, ctx: RunContext, item: Item, tmp: Path) -> dict[str, Any]:
        actor = self._free.get()
        try:
            extra, calls = self.ray.get(actor.make.remote(capability, str(ctx.rd.root), item.number, item.rel, item.inputs, str(tmp)))
        except self.ray.exceptions.RayTaskError as error:
            cause = error.cause if getattr(error, "cause", None) is not None else error
            raise StageError(f"{type(cause).__name__}: {cause}") from None
        finally:
            self._free.put(actor)
        ctx.calls.update(calls)
        return extra

    def release(self) -> None:
        self.ray.get([a.release.remote() for a in self.actors])

    def loads(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for counts in self.ray.get([a.loads.remote() for a in self.actors]):
            total.update(counts)
        return dict(total)

    def close(self) -> None:
        self.release()
        for actor in self.actors:
            self.ray.kill(actor)


def make_workers(config: dict[str, Any], ray_address: str | None, gpus: str | None, ray_workers: int | None = None) -> Workers | None:
    """Workers from the CLI options, or None for a plain local run."""
    if ray_address and gpus:
        raise InputError("--ray and --gpus: choose one (Ray places workers on GPUs itself)")
    if ray_address:
        return RayWorkers(config, ray_address, ray_workers)
    if gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids or not all(g.isdigit() or g == "cpu" for g in ids):
            raise InputError(f"--gpus {gpus!r}: give GPU indices, e.g. --gpus 0,1")
        return LocalGPUs(config, [f"cuda:{g}" if g.isdigit() else g for g in ids])  # `cpu` entries: the same path without a GPU
    return None
