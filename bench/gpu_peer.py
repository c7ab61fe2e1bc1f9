"""What a second GPU's load could cost if it copied the first GPU's weights instead of reading the checkpoint:
the host's layout (NUMA nodes, each GPU's local CPUs), GPU-to-GPU copy speed in one process, and the cost of
handing a model's worth of tensors to another process through CUDA IPC (the handles' pickling, their opening,
and the copy to the other GPU).

    python bench/gpu_peer.py --gib 31 --json peer.json      # a 2-GPU host

The tensors stand for a model's weights: `--tensors` of them, `--gib` in all, allocated one by one as a load
allocates them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import time
from pathlib import Path
from typing import Any


def host() -> dict[str, Any]:
    """NUMA nodes with their CPUs, and each GPU's PCI address and local CPU list (from sysfs)."""
    out: dict[str, Any] = {"numa": {}, "gpus": {}}
    for node in sorted(Path("/sys/devices/system/node").glob("node[0-9]*")):
        out["numa"][node.name] = (node / "cpulist").read_text().strip()
    try:
        rows = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id", "--format=csv,noheader"], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError) as error:
        return {**out, "error": str(error)}
    for row in rows:
        index, bus = (part.strip() for part in row.split(","))
        pci = Path("/sys/bus/pci/devices") / bus.lower()[4:]  # 00000000:18:00.0 -> 0000:18:00.0
        node = pci / "numa_node"
        cpus = pci / "local_cpulist"
        out["gpus"][index] = {"bus": bus, "numa_node": node.read_text().strip() if node.exists() else None,
                              "local_cpus": cpus.read_text().strip() if cpus.exists() else None}
    try:
        out["topo"] = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        out["topo"] = str(error)
    return out


def weights(count: int, gib: float, device: str) -> list[Any]:
    import torch

    size = int(gib * 2**30 / count) // 2
    return [torch.empty(size, dtype=torch.bfloat16, device=device) for _ in range(count)]


def timed(fn: Any, device_names: list[str]) -> float:
    import torch

    for d in device_names:
        torch.cuda.synchronize(d)
    started = time.perf_counter()
    fn()
    for d in device_names:
        torch.cuda.synchronize(d)
    return round(time.perf_counter() - started, 3)


def in_process(count: int, gib: float) -> dict[str, float]:
    """Copies from GPU 0 to GPU 1 in one process: one big tensor, then `count` tensors into fresh allocations."""
    import torch

    out: dict[str, float] = {"can_access_peer": torch.cuda.can_device_access_peer(1, 0)}
    pair = [torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device="cuda:0")]
    pair.append(torch.empty_like(pair[0], device="cuda:1"))

    def one() -> None:
        pair[1].copy_(pair[0])

    out["one_tensor_s"] = timed(one, ["cuda:0", "cuda:1"])
    out["one_tensor_again_s"] = timed(one, ["cuda:0", "cuda:1"])
    pair.clear()
    torch.cuda.empty_cache()
    src = weights(count, gib, "cuda:0")
    copies: list[Any] = []

    def many() -> None:
        copies.extend(t.to("cuda:1", copy=True) for t in src)

    for name in ("many_tensors_s", "many_tensors_again_s"):
        out[name] = timed(many, ["cuda:0", "cuda:1"])
        copies.clear()
        with torch.cuda.device(1):
            torch.cuda.empty_cache()
    return out


def consumer(conn: Any) -> None:
    """The other process: open the handles, copy every tensor to GPU 1, drop the handles; report the seconds."""
    from multiprocessing.reduction import ForkingPickler

    import torch

    torch.cuda.init()
    torch.empty(1, device="cuda:1")
    out: dict[str, float] = {}
    started = time.perf_counter()
    torch.empty(1, device="cuda:0")  # this process's context on the other GPU (an IPC open makes one)
    out["peer_context_s"] = round(time.perf_counter() - started, 3)
    for round_name in ("first", "second"):
        payload = conn.recv_bytes()
        started = time.perf_counter()
        tensors = ForkingPickler.loads(payload)
        out[f"{round_name}_open_s"] = round(time.perf_counter() - started, 3)
        copied = [t.to("cuda:1", copy=True) for t in tensors]
        torch.cuda.synchronize("cuda:1")
        out[f"{round_name}_open_and_copy_s"] = round(time.perf_counter() - started, 3)
        del tensors
        out[f"{round_name}_copied_gib"] = round(sum(t.numel() * t.element_size() for t in copied) / 2**30, 2)
        del copied
        with torch.cuda.device(1):
            torch.cuda.empty_cache()
        conn.send(out)


def across_processes(count: int, gib: float) -> dict[str, Any]:
    """This process holds `count` tensors on GPU 0; a spawned one opens them through CUDA IPC and copies them."""
    from multiprocessing.reduction import ForkingPickler

    import torch
    import torch.multiprocessing  # noqa: F401 - registers the CUDA tensor reductions on ForkingPickler

    spawn = multiprocessing.get_context("spawn")
    mine, theirs = spawn.Pipe()
    child = spawn.Process(target=consumer, args=(theirs,))
    child.start()
    src = weights(count, gib, "cuda:0")
    out: dict[str, Any] = {}
    for round_name in ("first", "second"):
        torch.cuda.synchronize("cuda:0")
        started = time.perf_counter()
        payload = bytes(ForkingPickler.dumps(src))
        out[f"{round_name}_pickle_s"] = round(time.perf_counter() - started, 3)
        out[f"{round_name}_pickle_bytes"] = len(payload)
        started = time.perf_counter()
        mine.send_bytes(payload)
        out.update(mine.recv())
        out[f"{round_name}_round_trip_s"] = round(time.perf_counter() - started, 3)
    child.join(60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=31.0)
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "host": host(),
                               "gib": args.gib, "tensors": args.tensors}
    print(results["host"].get("topo", ""), json.dumps({k: v for k, v in results["host"].items() if k != "topo"}), flush=True)
    results["in_process"] = in_process(args.tensors, args.gib)
    print(json.dumps(results["in_process"]), flush=True)
    torch.cuda.empty_cache()
    results["across_processes"] = across_processes(args.tensors, args.gib)
    print(json.dumps(results["across_processes"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
