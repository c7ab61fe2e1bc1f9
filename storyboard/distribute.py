"""Spreading a stage's beats over several GPUs: local devices (`--gpus 0,1`) or a Ray cluster (`--ray`).

The driver keeps everything that makes a run a run: it decides what is stale, computes every
content key, publishes each file atomically and writes run.json. Workers only make files: each
holds its own loaded model for the stage (model residency) and writes the artifact to the temp
path the driver gave it, inside the run directory (a filesystem every worker sees). So a
distributed run leaves exactly the files and keys a local run leaves.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .context import BackendPool, RunContext
from .errors import InputError, StageError, StoryboardError
from .produce import Item, in_flight
from .schema import Plan

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
    distributes: tuple[str, ...] = ("image", "image.base", "tts", "video")

    def make(self, capability: str, ctx: RunContext, item: Item, tmp: Path) -> dict[str, Any]:
        raise NotImplementedError

    def release(self, capabilities: tuple[str, ...] | None = None) -> None:
        """Free the workers' models (or only those of `capabilities`)."""
        return None

    def plan(self, idea: str, format_name: str, seed: int) -> tuple[Plan, dict[str, Any]]:
        """(plan, its figures) made on a worker: only where "planner" is in `distributes`."""
        raise NotImplementedError

    def loads(self) -> dict[str, int]:
        return {}

    def figures(self) -> dict[str, Any]:
        """Per capability and worker: beats made, seconds spent loading and making (where the workers keep them)."""
        return {}

    def load_ahead(self, stage: str) -> None:
        """Start loading `stage`'s models on the workers now, without waiting (where the workers can: worker processes,
        under the `load_ahead` rules on their own GPU), e.g. while the plans are written."""
        return None

    def close(self, now: bool = False) -> None:
        """Free the workers' models and let them go (`now`: without waiting for beats in flight, e.g. on Ctrl-C)."""
        self.release()


class _Devices(Workers):
    """Beats spread over local devices: a beat goes to the device with the fewest in flight, each device taking as
    many at a time as its backend does (the image and video backends: one on the GPU, one being saved), at most
    `slots`; per device, the beats made and the seconds spent loading and making them."""

    slots = 2  # the most beats in flight on one device, whatever the backend

    def __init__(self, config: dict[str, Any], devices: list[str]) -> None:
        self.size = len(devices) * self.slots
        self.devices = devices
        self._names = [d if devices.count(d) == 1 else f"{d}#{i}" for i, d in enumerate(devices)]
        self._busy = [0] * len(devices)
        self._lock = threading.Condition()
        self._figures: dict[str, dict[str, Counter[str]]] = {}
        self._probe = BackendPool(config)  # backends built, never loaded here: how many beats each takes at a time

    def _usable(self, index: int) -> bool:
        return True

    def _take(self, capability: str) -> int:
        limit = min(self.slots, in_flight(self._probe.get(capability)))
        with self._lock:
            while True:
                usable = [i for i in range(len(self.devices)) if self._usable(i)]
                if not usable:
                    raise StageError(f"no worker left for {capability}: every device's worker has stopped (see the log above)")
                free = [i for i in usable if self._busy[i] < limit]
                if free:
                    chosen = min(free, key=lambda i: self._busy[i])
                    self._busy[chosen] += 1
                    return chosen
                self._lock.wait()

    def _done(self, capability: str, index: int, load_s: float, make_s: float) -> None:
        with self._lock:
            row = self._figures.setdefault(capability, {}).setdefault(self._names[index], Counter())
            row.update(beats=1, load_s=load_s, make_s=make_s)
            self._busy[index] -= 1
            self._lock.notify_all()

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return {cap: {device: {k: round(v, 3) for k, v in row.items()} for device, row in rows.items()} for cap, rows in self._figures.items()}


class LocalGPUs(_Devices):
    """One backend pool per local GPU, all in this process (`gpu_workers: thread`): the second GPU copies the first
    one's pipeline where the backend allows it, but the GPUs' kernel launches share this interpreter."""

    def __init__(self, config: dict[str, Any], devices: list[str]) -> None:
        super().__init__(config, devices)
        self._pools = [BackendPool(_with_device(config, d), hold=True) for d in devices]

    def make(self, capability: str, ctx: RunContext, item: Item, tmp: Path) -> dict[str, Any]:
        cap = capability.split(".")[0]
        index = self._take(cap)
        pool = self._pools[index]
        started = loaded = time.monotonic()
        try:
            with pool.loaded(cap, ctx.calls) as backend:
                loaded = time.monotonic()
                return {**_maker(capability)(ctx, backend, item, tmp), "device": self.devices[index]}
        finally:
            self._done(cap, index, loaded - started, time.monotonic() - loaded)

    def release(self, capabilities: tuple[str, ...] | None = None) -> None:
        for pool in self._pools:
            pool.release(capabilities)

    def loads(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for pool in self._pools:
            total.update(pool.loads)
        return dict(total)


class GPUProcesses(_Devices):
    """One worker process per local GPU (`--gpus`, the default `gpu_workers: process`), started with the batch and
    kept until it ends: each holds its stage's model across the beats it receives (a `StageWorker`) and takes
    `slots` beats at a time. A process per GPU keeps each GPU's kernel launches off the other GPUs' interpreter
    (BENCHMARKS.md, issue 7). A worker that dies fails its beats and gets no more; the others go on."""

    def __init__(self, config: dict[str, Any], devices: list[str], worker: type[StageWorker] | None = None, share: bool | None = None) -> None:
        super().__init__(config, devices)
        # The first process reads a model loaded ahead from its checkpoint, the others copy its weights GPU to GPU
        # (CUDA IPC, hf_common.Siblings): one read of the checkpoint instead of one per GPU at once.
        self.share = all(d.startswith("cuda") for d in devices) and len(devices) > 1 if share is None else share
        spawn = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA
        kind = worker or StageWorker  # tests pass a subclass that fails on purpose
        self._children = [_Child(spawn, device, (kind, _with_device(config, device)), self.slots, self._wake) for device in devices]
        atexit.register(self.close)  # runs before multiprocessing's own exit hook, which would wait for them forever

    distributes = ("planner", *Workers.distributes)  # a batch's plans too: each process loads the planner on its GPU

    def _usable(self, index: int) -> bool:
        return self._children[index].alive

    def plan(self, idea: str, format_name: str, seed: int) -> tuple[Plan, dict[str, Any]]:
        _, (plan, figures) = self._on_a_child("planner", "plan", idea, format_name, seed)
        return plan, figures

    def make(self, capability: str, ctx: RunContext, item: Item, tmp: Path) -> dict[str, Any]:
        device, (extra, calls) = self._on_a_child(capability.split(".")[0], "make", capability, str(ctx.rd.root), item.number,
                                                  item.rel, item.inputs, str(tmp))
        ctx.calls.update(calls)
        return {**extra, "device": device}

    def _on_a_child(self, capability: str, method: str, *args: Any) -> tuple[str, tuple[Any, ...]]:
        """(device, the answer less its seconds) of `method(*args)` on the least busy process, counted in `figures`."""
        index = self._take(capability)
        seconds = {"load_s": 0.0, "make_s": 0.0}
        try:
            *answer, seconds = self._children[index].call(method, *args)
        finally:
            self._done(capability, index, **seconds)
        return self._children[index].device, tuple(answer)

    def release(self, capabilities: tuple[str, ...] | None = None) -> None:
        """Every process frees its models at once (a pipeline's free takes a moment on each GPU), then waits."""
        for future in [child.send("release", capabilities) for child in self._children if child.alive]:
            future.result()

    def load_ahead(self, stage: str) -> None:
        children = [child for child in self._children if child.alive]
        if not self.share or len(children) < 2:
            for child in children:
                child.send("load_ahead", stage)
            return
        leader, *followers = children
        leader.send("load_ahead", stage, "leader")
        for child in followers:
            child.send("load_ahead", stage, "follower")
        threading.Thread(target=self._hand_over, args=(leader, followers), name="storyboard-hand-over", daemon=True).start()

    @staticmethod
    def _hand_over(leader: _Child, followers: list[_Child]) -> None:
        """The leader's loaded pipelines (as CUDA IPC handles) to each follower, or nothing if it has none or fails."""
        try:
            offers = leader.call("offers")
        except StageError as error:
            log.warning("the leading worker process offered no weights (%s); every GPU loads its own", error)
            offers = []
        for child in followers:
            with contextlib.suppress(StageError):  # a follower that died fails its own beats
                child.call("adopt", offers)

    def loads(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for child in self._children:
            if child.alive:
                total.update(child.call("loads"))
            else:
                total.update(child.last_loads)
        return dict(total)

    def close(self, now: bool = False) -> None:
        atexit.unregister(self.close)
        for child in self._children:
            child.stop(now)


class _Child:
    """The parent's end of one worker process: calls go down a pipe with a job number; a reader thread hands each
    reply to the call waiting for it, and fails every waiting call if the process dies."""

    def __init__(self, spawn: Any, device: str, worker: WorkerSpec, slots: int, on_exit: Callable[[], None]) -> None:
        here, there = spawn.Pipe()
        self.device = device
        self.process = spawn.Process(target=_serve, args=(there, worker, slots), name=f"storyboard-{device}")
        self.process.start()
        there.close()
        self.alive = True
        self.last_loads: dict[str, int] = {}
        self._conn = here
        self._sending = threading.Lock()
        self._waiting: dict[int, Future[Any]] = {}
        self._jobs = itertools.count()
        self._on_exit = on_exit
        self._reader = threading.Thread(target=self._read, name=f"storyboard-{device}-replies", daemon=True)
        self._reader.start()

    def call(self, method: str, *args: Any) -> Any:
        value = self.send(method, *args).result()
        if method == "loads":
            self.last_loads = value
        return value

    def send(self, method: str, *args: Any) -> Future[Any]:
        """Ask for `method(*args)` in the process; the future holds its answer."""
        future: Future[Any] = Future()
        with self._sending:
            if not self.alive:
                raise StageError(self._stopped())
            job = next(self._jobs)
            self._waiting[job] = future
            self._conn.send((job, method, args))
        return future

    def _read(self) -> None:
        while True:
            try:
                job, ok, value = self._conn.recv()
            except (EOFError, OSError):
                break
            future = self._waiting.pop(job)
            if ok:
                future.set_result(value)
            else:
                kind, message, ours = value
                future.set_exception(StageError(message if ours else f"{kind}: {message}"))
        with self._sending:
            self.alive = False
            waiting, self._waiting = self._waiting, {}
        self.process.join(timeout=10)
        for future in waiting.values():
            future.set_exception(StageError(self._stopped()))
        if waiting or self.process.exitcode:
            log.error("%s", self._stopped())
        self._on_exit()

    def _stopped(self) -> str:
        return f"the worker process for {self.device} stopped (exit code {self.process.exitcode})"

    def stop(self, now: bool = False, timeout: float = 60.0) -> None:
        """Ask the process to finish its beats, free its models and exit; end it if it does not, or at once with `now`
        (its beats in flight then fail). Its load counts stay readable (`last_loads`)."""
        if now:
            self.process.terminate()
        else:
            with contextlib.suppress(StageError):
                self.call("loads")
            with self._sending:
                if self.alive:
                    with contextlib.suppress(OSError):
                        self._conn.send(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._reader.join(timeout=10)
        self._conn.close()


WorkerSpec = tuple[type["StageWorker"], dict[str, Any]]  # (worker class, its config)


def _serve(conn: Connection, worker_spec: WorkerSpec, slots: int) -> None:
    """A worker process: make what the parent sends, `slots` at a time, until it sends None; exit at once when the
    parent is gone (its pipe closes). Ctrl-C is the parent's to handle: it closes the pipe."""
    from .ffmpeg import stop_all

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def end(*_: Any) -> None:
        stop_all()
        os._exit(1)

    signal.signal(signal.SIGTERM, end)
    kind, config = worker_spec
    worker = kind(config)
    sending = threading.Lock()

    def run(job: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            reply: tuple[Any, ...] = (job, True, getattr(worker, method)(*args))
        except Exception as error:  # noqa: BLE001 - the parent raises it as the beat's failure
            reply = (job, False, (type(error).__name__, str(error), isinstance(error, StoryboardError)))
        with sending:
            try:
                conn.send(reply)
            except Exception as error:  # noqa: BLE001 - a reply that does not pickle must still answer the call
                conn.send((job, False, (type(error).__name__, f"the reply could not be sent: {error}", False)))

    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="storyboard-beat") as threads:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                end()
            if message is None:
                break
            if message[1] == "load_ahead":  # here, in order: a later call sees the loads ahead started (they run on threads)
                run(*message)
            elif message[1] in ("offers", "adopt"):  # a load's hand-over between processes takes no beat's slot
                threading.Thread(target=run, args=message, name=f"storyboard-{message[1]}", daemon=True).start()
            else:
                threads.submit(run, *message)
    worker.release()


class StageWorker:
    """A Ray actor: keeps each stage's model loaded across the beats it receives."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.getLogger("storyboard").setLevel(logging.INFO)
        self.config = config
        self.pool = BackendPool(config, hold=True)

    def make(self, capability: str, root: str, number: int, rel: str, inputs: dict[str, Any],
             tmp: str) -> tuple[dict[str, Any], dict[str, int], dict[str, float]]:
        """(what the manifest records, the calls made, {load_s, make_s})."""
        from .manifest import Freshness

        ctx = RunContext.open(Path(root), self.config, pool=self.pool)
        item = Item(number, ctx.rd.root / rel, inputs, Freshness("missing"), rel)
        with self._timed(capability.split(".")[0], ctx.calls) as (backend, seconds):
            extra = _maker(capability)(ctx, backend, item, Path(tmp))
        return extra, dict(ctx.calls), seconds

    def plan(self, idea: str, format_name: str, seed: int) -> tuple[Plan, dict[str, Any], dict[str, float]]:
        """(the plan, its figures for run.json, {load_s, make_s}); the caller writes it into the run."""
        from .plan import make_plan

        figures: dict[str, Any] = {}
        with self._timed("planner", Counter()) as (_, seconds):
            plan = make_plan(idea, format_name, self.config, seed, self.pool, figures)
        return plan, figures, seconds

    @contextlib.contextmanager
    def _timed(self, capability: str, calls: Counter[str]) -> Iterator[tuple[Any, dict[str, float]]]:
        """The loaded backend, and {load_s, make_s}: filled in as the block ends."""
        seconds: dict[str, float] = {}
        started = time.monotonic()
        with self.pool.loaded(capability, calls) as backend:
            loaded = time.monotonic()
            yield backend, seconds
        seconds.update(load_s=loaded - started, make_s=time.monotonic() - loaded)

    def release(self, capabilities: tuple[str, ...] | None = None) -> None:
        from .backends.hf_common import SIBLINGS

        if capabilities is None:  # the stage's end (not the planners' release while the first stage loads ahead)
            SIBLINGS.forget_offers()
        self.pool.release(capabilities)

    def loads(self) -> dict[str, int]:
        return dict(self.pool.loads)

    def load_ahead(self, stage: str, role: str | None = None) -> None:
        """Start loading `stage`'s models on threads (the `load_ahead` rules, on this worker's GPU). With a `role`
        the loads are handed over between processes: the leader's are offered (`offers`), a follower's wait for
        them (`adopt`) first."""
        from . import ahead
        from .backends.hf_common import SIBLINGS

        if str(self.config.get("device", "")).startswith("cuda"):
            import torch  # noqa: F401 - the free-memory rule reads the GPU through it
        if role is not None:
            import torch.multiprocessing  # noqa: F401 - here, before the loads' threads import torch too
        if role == "follower":
            SIBLINGS.expect()
        ahead.start(self.pool, self.config, stage)

    def offers(self) -> list[tuple[tuple[Any, ...], bytes]]:
        """The pipelines this process loaded ahead, as offers for the other processes (once loaded)."""
        from .backends.hf_common import SIBLINGS

        return SIBLINGS.offers(lambda: not self.pool.loads_under_way())

    def adopt(self, offers: list[tuple[tuple[Any, ...], bytes]]) -> int:
        """Take the leading process's offers: this process's waiting loads copy them."""
        from .backends.hf_common import SIBLINGS

        return SIBLINGS.adopt(offers)

    def peer_copies(self) -> int:
        """Pipelines this process copied from another process's GPU instead of reading their checkpoint."""
        from .backends.hf_common import SIBLINGS

        return SIBLINGS.copied_from_peers

    def loaded_ahead(self, capability: str) -> bool:
        """Whether `capability` was loaded ahead here (waiting for that load)."""
        return self.pool.loaded_ahead(capability)


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
            extra, calls, _ = self.ray.get(actor.make.remote(capability, str(ctx.rd.root), item.number, item.rel, item.inputs, str(tmp)))
        except self.ray.exceptions.RayTaskError as error:
            cause = error.cause if getattr(error, "cause", None) is not None else error
            raise StageError(f"{type(cause).__name__}: {cause}") from None
        finally:
            self._free.put(actor)
        ctx.calls.update(calls)
        return extra

    def release(self, capabilities: tuple[str, ...] | None = None) -> None:
        self.ray.get([a.release.remote(capabilities) for a in self.actors])

    def loads(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for counts in self.ray.get([a.loads.remote() for a in self.actors]):
            total.update(counts)
        return dict(total)

    def close(self, now: bool = False) -> None:
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
        devices = [f"cuda:{g}" if g.isdigit() else g for g in ids]  # `cpu` entries: the same path without a GPU
        if gpu_workers(config) == "thread":
            return LocalGPUs(config, devices)
        return GPUProcesses(config, devices)
    return None


def gpu_workers(config: dict[str, Any]) -> str:
    """How `--gpus` drives its GPUs (top-level `gpu_workers`): `process` (default), a worker process per GPU, or
    `thread`, every GPU from this process; InputError naming the field for anything else."""
    value = str(config.get("gpu_workers", "process")).lower()
    if value not in ("process", "thread"):
        raise InputError(f"gpu_workers: {config.get('gpu_workers')!r}; choose process or thread")
    return value
