"""What every local-model backend shares: finding weights offline, device and dtype, GPU memory figures.

Weights come from a path or the local Hugging Face cache, never from the network at run time:
a missing model is one clear error naming it and the command that fetches it.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PreflightError

log = logging.getLogger("storyboard")

# from_pretrained patches process-wide state while it builds modules (meta-device init): two loads at
# once in one process (a pipeline per GPU under --gpus) corrupt each other. Reading weights is serialised;
# moving them to each GPU is not.
LOAD_LOCK = threading.Lock()
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "float32": "float32", "fp32": "float32"}


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.count("/") != 1


def resolve_model(ref: str, what: str) -> Path:
    """A local directory for `ref` (a path, or a hub id already in the local cache)."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if _looks_like_path(ref):
        raise PreflightError(f"{what}: model path {ref} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - every hub error here means "not in the cache"
        raise PreflightError(f"{what}: model {ref} is not in the local cache ({HF_HUB_CACHE}); fetch it once with: hf download {ref}") from None


def model_index(path: Path | None) -> dict[str, Any]:
    """A diffusers checkpoint's model_index.json (components and `_class_name`), or {} where there is none."""
    index = path / "model_index.json" if path is not None else None
    return json.loads(index.read_text(encoding="utf-8")) if index is not None and index.is_file() else {}


def missing(refs: dict[str, str | None]) -> list[str]:
    """The configured models (role → id or path) that are not present locally, as messages."""
    out = []
    seen: set[str] = set()
    for what, ref in refs.items():
        if not ref or ref in seen:
            continue
        seen.add(ref)
        try:
            resolve_model(ref, what)
        except PreflightError as error:
            out.append(str(error))
    return out


def device_of(settings: dict[str, Any]) -> str:
    """`device` from the backend's settings, else cuda when there is one."""
    import torch

    wanted = str(settings.get("device", "auto"))
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def dtype_of(settings: dict[str, Any], device: str, key: str = "dtype") -> Any:
    """torch dtype from settings (bfloat16 on GPU, float32 on CPU unless set)."""
    import torch

    name = str(settings.get(key, "bfloat16" if device.startswith("cuda") else "float32")).lower()
    if name not in DTYPES:
        raise PreflightError(f"{key}: {name!r} is not a dtype; choose one of bfloat16, float16, float32")
    return getattr(torch, DTYPES[name])


def bnb_4bit(compute_dtype: Any) -> Any:
    """transformers' nf4 config, compute in `compute_dtype` (the non-quantised layers must match it)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=True)


def load_pretrained(settings: dict[str, Any], ref: str, what: str, model_class: str, processor_class: str,
                    load_in_4bit: bool = False) -> tuple[Any, Any]:
    """(processor or tokenizer, model in eval mode) from a local checkpoint through transformers' Auto classes."""
    with LOAD_LOCK:
        import transformers

        path = resolve_model(ref, what)
        device = device_of(settings)
        dtype = dtype_of(settings, device)
        extra: dict[str, Any] = {"quantization_config": bnb_4bit(dtype)} if load_in_4bit else {}
        processor = getattr(transformers, processor_class).from_pretrained(path)
        # 4-bit weights quantise as they load onto the GPU; others load on the CPU and move through the pinned stager
        # (a direct load copies from pageable memory, which stalls whatever else runs on the GPU meanwhile).
        staged = not load_in_4bit and device.startswith("cuda")
        model = getattr(transformers, model_class).from_pretrained(path, dtype=dtype, device_map="cpu" if staged else device, **extra)
    return processor, (to_device(model, device) if staged else model).eval()


def load_pipeline(settings: dict[str, Any], ref: str, what: str, dtype: Any, device: str, shared: dict[str, Any] | None = None,
                  siblings: bool = False) -> Any:
    """A diffusers pipeline from a local checkpoint with the memory settings every diffusers backend shares:
    components to reuse from an already loaded pipeline (`shared`), nf4 text encoders (`text_encoder_4bit`), fp8
    layerwise storage of the denoiser (`fp8`) and of the VAE (`fp8_vae`), VAE tiling (`vae_tiling`; video VAEs also
    `vae_temporal_tile_frames`), and offload none|model|group|sequential. With `siblings` (a backend that changes
    nothing in the pipeline after this), a second GPU copies the pipeline from the first (`Siblings`)."""
    with LOAD_LOCK:  # diffusers' lazy imports and from_pretrained are not safe in two threads at once
        from diffusers import PipelineQuantizationConfig

    path = resolve_model(ref, what)
    index = model_index(path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    encoders = [name for name in index if name.startswith("text_encoder")]
    if shared:
        kwargs.update({k: v for k, v in shared.items() if k in index and index[k][1] == type(v).__name__})
    if settings.get("text_encoder_4bit") and encoders:
        todo = [name for name in encoders if name not in kwargs]
        if todo:
            kwargs["quantization_config"] = PipelineQuantizationConfig(
                quant_backend="bitsandbytes_4bit", components_to_quantize=todo,
                quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype})
    key = _sibling_key(path, settings, dtype, device, shared) if siblings else None
    source = SIBLINGS.claim(key, device) if key is not None else None
    if source is not None:  # the same checkpoint with the same settings is on another GPU: copy it from there
        return assemble(source if isinstance(source, dict) else portable(source), device, settings, dtype)
    try:
        pipe = _load_pipeline(settings, path, what, kwargs, dtype, device)
    except BaseException:
        if key is not None:
            SIBLINGS.failed(key, device)
        raise
    if key is not None:
        SIBLINGS.loaded(key, device, pipe)
    return pipe


def _load_pipeline(settings: dict[str, Any], path: Path, what: str, kwargs: dict[str, Any], dtype: Any, device: str) -> Any:
    import torch

    with LOAD_LOCK:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    memory_settings(pipe, settings, dtype)
    offload = str(settings.get("offload", "none"))
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(onload_device=torch.device(device), offload_type="leaf_level", use_stream=device.startswith("cuda"))
    elif offload == "none":
        to_device(pipe, device)
    else:
        raise PreflightError(f"{what}: offload {offload!r}; choose none, model, group or sequential")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def memory_settings(pipe: Any, settings: dict[str, Any], dtype: Any) -> None:
    """fp8 storage of the denoiser (`fp8`) and VAE (`fp8_vae`), VAE tiling (`vae_tiling`, `vae_temporal_tile_frames`)."""
    torch = _torch()
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if settings.get("fp8") and denoiser is not None:
        denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if settings.get("fp8_vae") and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if settings.get("vae_tiling") and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    frames = int(settings.get("vae_temporal_tile_frames") or 0)
    if frames and hasattr(getattr(pipe, "vae", None), "use_framewise_decoding"):  # video VAEs (LTX): tiles along time too
        pipe.vae.enable_tiling(tile_sample_min_num_frames=frames, tile_sample_stride_num_frames=max(8, frames - 8))
        pipe.vae.use_framewise_encoding = pipe.vae.use_framewise_decoding = True


def _sibling_key(path: Path, settings: dict[str, Any], dtype: Any, device: str, shared: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What makes two loads the same pipeline, for loads that may be copied GPU to GPU (None for the others: not on
    a GPU, 4-bit encoders, offloading, or components borrowed from another pipeline)."""
    if not device.startswith("cuda") or shared or settings.get("text_encoder_4bit") or str(settings.get("offload", "none")) != "none":
        return None
    options = ("fp8", "fp8_vae", "vae_tiling", "vae_temporal_tile_frames")
    return (str(path.resolve()), str(dtype), *(repr(settings.get(name)) for name in options))


class Siblings:
    """Pipelines this process holds on its GPUs, by checkpoint and memory settings. Under `--gpus 0,1` every GPU
    loads the stage's model; the first reads the checkpoint and the others wait for it and copy its weights GPU to
    GPU (`clone_pipeline`), instead of reading it again one after another (checkpoint reads are serialised).
    Only weak references are kept: a pipeline released by its backend is gone from here too.

    Across worker processes (one per GPU) the same happens through the parent: a follower `expect`s the leader's
    offers before its loads start; the leader's `offers` are its pipelines' weights as CUDA IPC handles
    (`portable`, pickled by torch's reductions), which the parent hands to the follower's `adopt`. Until then a
    follower's load of a pipeline waits; one not offered it loads itself."""

    wait_for_offers_s = 600.0  # a follower never waits longer for the leader's offers: it loads itself then

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._held: dict[tuple[Any, ...], dict[str, Any]] = {}  # key -> device -> weakref to its pipeline
        self._loading: dict[tuple[Any, ...], str] = {}  # key -> the device whose load is under way
        self._offered: dict[tuple[Any, ...], dict[str, Any]] = {}  # key -> another process's pipeline (`portable`)
        self._expecting = 0.0  # while set (the monotonic deadline), loads wait for another process's offers
        self.copied_from_peers = 0  # pipelines copied from another process's GPU

    def claim(self, key: tuple[Any, ...], device: str) -> Any:
        """A pipeline of `key` on another device to copy (waiting for a load of it under way, or for another
        process's offers), as a pipeline or as `portable` parts; or None: the caller loads it (and then says
        `loaded` or `failed`)."""
        with self._lock:
            while True:
                held = {other: ref for other, ref in self._held.get(key, {}).items() if ref() is not None}  # released ones go
                self._held[key] = held
                for other, ref in held.items():
                    pipe = ref()
                    if other != device and pipe is not None:
                        return pipe
                if key in self._offered:
                    self.copied_from_peers += 1
                    return self._offered.pop(key)
                if self._expecting and time.monotonic() < self._expecting:
                    self._lock.wait(max(0.0, self._expecting - time.monotonic()))
                    continue
                if self._expecting:
                    log.warning("no offer from the leading worker process in %.0f s: loading the model here", self.wait_for_offers_s)
                    self._expecting = 0.0
                if self._loading.get(key) in (None, device):  # nobody else is loading it: this device does
                    self._loading[key] = device
                    return None
                self._lock.wait()

    def expect(self) -> None:
        """Loads from now on wait for another process's offers (`adopt`) before reading a checkpoint."""
        with self._lock:
            self._expecting = time.monotonic() + self.wait_for_offers_s

    def adopt(self, offers: list[tuple[tuple[Any, ...], bytes]]) -> int:
        """Take another process's offers (key, pickled `portable`): the waiting loads copy them. Opens their CUDA IPC
        handles here (this process's context on the other GPU is made then). How many were taken."""
        from multiprocessing.reduction import ForkingPickler

        with LOAD_LOCK:  # not beside another thread's first import of torch
            import torch.multiprocessing  # noqa: F401 - torch's tensor reductions, for the handles

        taken = {}
        for key, payload in offers:
            try:
                taken[tuple(key)] = ForkingPickler.loads(payload)
            except Exception as error:  # noqa: BLE001 - that model is loaded from its checkpoint instead
                log.warning("could not open the weights offered by the leading worker process (%s: %s); loading them here",
                            type(error).__name__, error)
        with self._lock:
            self._offered.update(taken)
            self._expecting = 0.0
            self._lock.notify_all()
        return len(taken)

    def offers(self, done: Callable[[], bool], timeout: float = 600.0) -> list[tuple[tuple[Any, ...], bytes]]:
        """This process's pipelines as offers for `adopt` (their weights' CUDA IPC handles), once one is loaded or
        `done()` says no load is under way any more."""
        from multiprocessing.reduction import ForkingPickler

        with LOAD_LOCK:  # not beside another thread's first import of torch
            import torch.multiprocessing  # noqa: F401 - registers the CUDA tensor reductions (IPC handles, not bytes)

        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                pipes = [(key, ref()) for key, held in self._held.items() for ref in held.values()]
                pipes = [(key, pipe) for key, pipe in pipes if pipe is not None]
                if pipes or done() or time.monotonic() > deadline:
                    break
                self._lock.wait(0.02)
        return [(key, bytes(ForkingPickler.dumps(portable(pipe)))) for key, pipe in pipes]

    def forget_offers(self) -> None:
        """Drop offers no load took (their handles keep the other GPU's memory)."""
        with self._lock:
            self._offered.clear()
            self._expecting = 0.0
            self._lock.notify_all()

    def loaded(self, key: tuple[Any, ...], device: str, pipe: Any) -> None:
        with self._lock:
            self._held.setdefault(key, {})[device] = weakref.ref(pipe)
            if self._loading.get(key) == device:
                del self._loading[key]
            self._lock.notify_all()

    def failed(self, key: tuple[Any, ...], device: str) -> None:
        with self._lock:
            if self._loading.get(key) == device:
                del self._loading[key]
            self._lock.notify_all()


SIBLINGS = Siblings()


def clone_pipeline(pipe: Any, device: str, settings: dict[str, Any], dtype: Any) -> Any:
    """A copy of loaded pipeline `pipe` on `device`, without reading the checkpoint (`assemble` of its `portable`
    parts)."""
    return assemble(portable(pipe), device, settings, dtype)


def portable(pipe: Any) -> dict[str, Any]:
    """What `assemble` rebuilds `pipe` from: its class, and per component either (model class, config, weights by
    name, tied weights as one object) or the object itself (tokenizers, scheduler). Pickled with torch's reductions,
    GPU weights travel to another process as CUDA IPC handles."""
    torch = _torch()
    parts: dict[str, Any] = {}
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module):
            parts[name] = ("model", type(part), part.config, part.state_dict(keep_vars=True))
        else:
            parts[name] = ("object", part)
    return {"class": type(pipe), "parts": parts}


def assemble(source: dict[str, Any], device: str, settings: dict[str, Any], dtype: Any) -> Any:
    """A pipeline on `device` from `portable` parts: each model is built empty from its config and given copies of
    the weights made straight from their GPU (peer to peer where the GPUs allow; tied weights stay tied, fp8 storage
    stays fp8), then the memory settings are applied as a load applies them. Tokenizers and the scheduler are copied
    (they keep state)."""
    import copy

    from accelerate import init_empty_weights

    torch = _torch()
    dev = torch.device(device)
    copies: dict[int, Any] = {}
    parts: dict[str, Any] = {}
    for name, part in source["parts"].items():
        if part[0] == "object":
            parts[name] = copy.deepcopy(part[1])
            continue
        _, cls, config, weights = part
        with init_empty_weights():
            model = cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)
        state = {}
        for key, tensor in weights.items():
            if id(tensor) not in copies:  # a Parameter is assigned as given: tied weights stay one Parameter
                moved = tensor.detach().to(dev, non_blocking=True, copy=True)
                copies[id(tensor)] = torch.nn.Parameter(moved, tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else moved
            state[key] = copies[id(tensor)]
        model.load_state_dict(state, strict=True, assign=True)
        parts[name] = model.to(dev).eval()  # buffers kept outside the state dict follow
    twin = source["class"](**parts)
    memory_settings(twin, settings, dtype)
    twin.set_progress_bar_config(disable=True)
    for used in {dev} | {t.device for part in source["parts"].values() if part[0] == "model" for t in part[3].values()}:
        if used.type == "cuda":  # the copies have ended on both sides: the source may go
            torch.cuda.synchronize(used)
    return twin


class _Lane:
    """Two pinned host buffers and a stream: a CPU copy into one buffer while the other's copy to the GPU runs."""

    def __init__(self, slot_bytes: int) -> None:
        import torch

        self.slot_bytes = slot_bytes
        self.slots = [torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.done = [torch.cuda.Event(), torch.cuda.Event()]
        self.stream = torch.cuda.Stream()
        self.turn = 0

    def copy(self, source: Any, target: Any) -> None:
        """Bytes of CPU tensor `source` into GPU tensor `target` (same shape and dtype), `slot_bytes` at a time."""
        torch = _torch()
        src = source.contiguous().reshape(-1).view(torch.uint8)
        dst = target.reshape(-1).view(torch.uint8)
        for start in range(0, src.numel(), self.slot_bytes):
            n = min(self.slot_bytes, src.numel() - start)
            slot, event = self.slots[self.turn], self.done[self.turn]
            event.synchronize()  # this buffer's previous copy to the GPU has finished
            slot[:n].copy_(src[start : start + n])
            with torch.cuda.stream(self.stream):
                dst[start : start + n].copy_(slot[:n], non_blocking=True)
                event.record(self.stream)
            self.turn ^= 1


class _Stager:
    """Pinned host buffers reused for every weight copy to one GPU, in `lanes` that copy side by side. A copy from
    ordinary (pageable) host memory runs at ~6.5 GiB/s and holds up every kernel queued by other threads until it
    is done, whatever the stream; a copy from pinned memory runs at ~50 GiB/s beside them (bench/overlap_copy.py,
    H100). Pinning the weights themselves costs ~1 s per GiB, so they pass through these buffers instead. One lane
    is bound by its CPU copy out of the checkpoint's pages; several lanes read different weights at once."""

    def __init__(self, slot_bytes: int, lanes: int = 1) -> None:
        self.lanes = [_Lane(slot_bytes) for _ in range(max(1, lanes))]
        self.lock = threading.Lock()  # one move at a time per GPU: they share the buffers (and the bus)

    def copy_all(self, pairs: list[tuple[Any, Any, int]]) -> None:
        """Every (CPU source, GPU target, lane) copied, each lane on a thread of its own; waits for the GPU copies."""
        from concurrent.futures import ThreadPoolExecutor

        torch = _torch()
        device = torch.cuda.current_device()

        def run(lane: _Lane) -> None:
            with torch.cuda.device(device):
                for source, target, index in pairs:
                    if self.lanes[index] is lane:
                        lane.copy(source, target)
                lane.stream.synchronize()

        busy = sorted({index for _, _, index in pairs})
        if len(busy) <= 1:
            for index in busy:
                run(self.lanes[index])
            return
        with ThreadPoolExecutor(len(busy), thread_name_prefix="storyboard-stage") as threads:
            for future in [threads.submit(run, self.lanes[index]) for index in busy]:
                future.result()  # the first lane's error, once every lane has stopped touching the buffers


_STAGERS: dict[int, _Stager] = {}  # per GPU: a buffer's event belongs to the device it was first recorded on
_STAGERS_LOCK = threading.Lock()
# Lanes per GPU's stager. 31.1 GiB of Flux weights to an H100 (bench/gpu_batch.py --load-profile): 1 lane 1.51-1.78 s,
# 2 lanes 1.26-1.29 s, 4 lanes 1.21-1.32 s, 8 lanes 1.46-1.55 s; two hold the fewest pinned buffers for that speed.
COPY_LANES = 2


def to_device(target: Any, device: str, slot_mib: int = 64) -> Any:
    """`target` (a torch module, or a diffusers pipeline's modules) moved to `device`; to a CUDA device through the
    pinned stager, so a move on a background thread (the next stage's model) does not stall the GPU work in front.
    Plain CPU tensors go through the stager; anything else (4-bit parameters, which quantise as they move) is left
    to the module's own `.to()`, which then also does the bookkeeping (a pipeline's hooks, a model's device)."""
    torch = _torch()
    if torch is None or not str(device).startswith("cuda") or not torch.cuda.is_available():
        return target.to(device)
    modules = [target] if isinstance(target, torch.nn.Module) else [m for m in getattr(target, "components", {}).values()
                                                                    if isinstance(m, torch.nn.Module)]
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    dev = torch.device("cuda", index)
    with _STAGERS_LOCK:
        if index not in _STAGERS:
            with torch.cuda.device(dev):
                _STAGERS[index] = _Stager(slot_mib * 2**20, COPY_LANES)
        stager = _STAGERS[index]
    with stager.lock, torch.cuda.device(dev):
        consumer = torch.cuda.default_stream(dev)
        loads = [0] * len(stager.lanes)  # bytes given to each lane: each new weight goes to the lightest
        moved: dict[int, Any] = {}
        pairs: list[tuple[Any, Any, int]] = []
        for module in modules:
            for owner in module.modules():
                for table in (owner._parameters, owner._buffers):
                    for name, tensor in table.items():
                        if tensor is None or type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.device.type != "cpu":
                            continue
                        key = id(tensor)
                        if key not in moved:  # tied weights move once and stay tied
                            lane = loads.index(min(loads))
                            loads[lane] += tensor.numel() * tensor.element_size()
                            with torch.cuda.stream(stager.lanes[lane].stream):  # from the lane stream's own memory: no
                                gpu = torch.empty(tensor.shape, dtype=tensor.dtype, device=dev)  # block another thread's kernels still read
                            gpu.record_stream(consumer)  # used on the default stream: freed only after its work there
                            pairs.append((tensor.data, gpu, lane))
                            moved[key] = gpu
                        if isinstance(tensor, torch.nn.Parameter):
                            tensor.data = moved[key]
                        else:
                            table[name] = moved[key]
        stager.copy_all(pairs)
    return target.to(device)


def same_weights(cls: Any, pipe: Any) -> Any:
    """Pipeline class `cls` on `pipe`'s loaded components: no copy and no dtype change. (`from_pipe` casts every
    component to its `dtype` argument, float32 when none is given, which would also undo fp8 storage.)"""
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    parts = {name: part for name, part in pipe.components.items() if name in accepted and part is not None}
    parts["scheduler"] = type(pipe.scheduler).from_config(pipe.scheduler.config)  # its own step state
    new = cls(**parts)
    new.set_progress_bar_config(disable=True)
    return new


def _torch() -> Any:
    """torch if a backend already imported it (figures never import torch on their own)."""
    return sys.modules.get("torch")


def reset_peak() -> None:
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    """Peak GPU memory allocated since the last reset, in GiB (None without CUDA)."""
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def in_use_gib() -> float | None:
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return None
    return round(torch.cuda.memory_allocated() / 2**30, 2)


def watch(*held: Any) -> list[weakref.ref[Any]]:
    """Weak references to the torch modules in `held` (models, pipelines' components, tuples or dicts of them), taken
    before a backend drops them, for `free_memory` to tell whether they outlived their last reference."""
    torch = _torch()
    if torch is None:
        return []
    refs: list[weakref.ref[Any]] = []
    for item in held:
        if isinstance(item, dict):
            refs += watch(*item.values())
        elif isinstance(item, (list, tuple)):
            refs += watch(*item)
        elif isinstance(item, torch.nn.Module):
            refs.append(weakref.ref(item))
        elif isinstance(getattr(item, "components", None), dict):  # a diffusers pipeline
            refs += watch(*item.components.values())
    return refs


def free_memory(watched: list[weakref.ref[Any]] | None = None) -> None:
    """Give cached GPU memory back after a stage drops its models. A full garbage collection (a third of a second
    with a pipeline's objects about) runs only where a `watched` module is still alive after it was dropped, i.e. a
    reference cycle holds it; with no torch module watched (none given, or a model of another library), always. The
    cycle every diffusers pipeline call leaves (a module and its empty hook registry, made for the call's cache
    context) is broken first."""
    if watched:
        _break_hook_cycles([ref() for ref in watched])
    if not watched or any(ref() is not None for ref in watched):
        gc.collect()
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _break_hook_cycles(modules: list[Any]) -> None:
    """Drop the hook registries without hooks from dropped modules that are still alive: each points back at its
    module. A registry holding hooks (offloading, caches) is left for the garbage collector."""
    for module in modules:
        for sub in module.modules() if module is not None else ():
            registry = sub.__dict__.get("_diffusers_hook")
            if registry is not None and not registry.hooks:
                del sub.__dict__["_diffusers_hook"]


def synchronize() -> None:
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


class LoadedModel:
    """Base for backends holding torch models: load once in `load()`, free on exit, keep figures."""

    def _init_figures(self) -> None:
        self.figures: dict[str, Any] = {}

    def timed_load(self, load: Any) -> None:
        reset_peak()
        started = time.monotonic()
        load()
        synchronize()
        self.figures = {"load_s": round(time.monotonic() - started, 3), "after_load_gib": in_use_gib()}

    def stage_figures(self) -> dict[str, Any]:
        """Load time and peak GPU memory so far (what run.json records for the stage)."""
        return {**self.figures, "peak_vram_gib": peak_gib()}


class TransformersBackend(LoadedModel):
    """A backend on one transformers checkpoint: `model_ref` and `load_in_4bit` from settings, loaded once on
    entry as (`processor`, `model`) through the Auto classes named by the subclass, freed on exit."""

    role = "model"
    default_model = ""
    model_class = "AutoModel"
    processor_class = "AutoProcessor"

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._init_figures()
        self.model_ref = str(settings.get("model", self.default_model))
        self.load_in_4bit = bool(settings.get("load_in_4bit", False))
        self.model: Any = None
        self.processor: Any = None

    def missing_models(self) -> list[str]:
        return missing({self.role: self.model_ref})

    def __enter__(self) -> Any:
        def load() -> None:
            self.processor, self.model = load_pretrained(self.settings, self.model_ref, self.role, self.model_class,
                                                         self.processor_class, self.load_in_4bit)

        self.timed_load(load)
        return self

    def __exit__(self, *exc: object) -> None:
        dropped = watch(self.model)
        self.model = self.processor = None
        free_memory(dropped)
