"""Does a model moving to the GPU on a background thread slow the GPU work in front of it? (issue 9)

Loading the next stage's model while the current stage runs only pays if the copy does not stall the current
stage's kernels. This measures, in one process, a foreground workload alone and beside a background thread
that copies `--gib` GiB of host tensors to the GPU, with the copy on the default stream or on its own stream,
from pageable or pinned memory. Two foregrounds: `small` (many small kernels, like one token of decoding or a
VITS/whisper call) and `large` (big matmuls, like a diffusion step).

    python bench/overlap_copy.py --gib 16 --json overlap.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    dev = torch.device("cuda")
    host = [torch.full((2**30 // 2,), 0.5, dtype=torch.bfloat16) for _ in range(args.gib)]  # 1 GiB each, pages touched
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "gib": args.gib}
    print("host tensors ready", flush=True)

    w_small = [torch.randn(1024, 1024, device=dev, dtype=torch.bfloat16) for _ in range(48)]
    x_small = torch.randn(1, 1024, device=dev, dtype=torch.bfloat16)
    w_large = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)

    def small(n: int = 300) -> None:
        for _ in range(n):
            y = x_small
            for w in w_small:
                y = torch.nn.functional.gelu(y @ w)
            y.sum().item()  # one host sync per "token"

    def large(n: int = 400) -> None:
        y = w_large
        for _ in range(n):
            y = (y @ w_large).clamp_(-1, 1)
        torch.cuda.synchronize()

    def timed(fn: Any) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - started

    def copy(tensors: list[Any], side: bool) -> tuple[float, list[Any]]:
        stream = torch.cuda.Stream() if side else torch.cuda.current_stream()
        started = time.perf_counter()
        with torch.cuda.stream(stream):
            out = [t.to(dev, non_blocking=True) for t in tensors]
        stream.synchronize()
        return time.perf_counter() - started, out

    for fn in (small, large):
        fn(20)  # warm kernels
    results["alone"] = {"small_s": round(timed(small), 3), "large_s": round(timed(large), 3)}
    seconds, out = copy(host, side=False)
    results["copy_alone_pageable_s"] = round(seconds, 3)
    del out
    torch.cuda.empty_cache()
    started = time.perf_counter()
    pinned = [t.pin_memory() for t in host]
    results["pin_s"] = round(time.perf_counter() - started, 3)
    seconds, out = copy(pinned, side=True)
    results["copy_alone_pinned_s"] = round(seconds, 3)
    del out
    torch.cuda.empty_cache()

    for source, tensors in (("pageable", host), ("pinned", pinned)):
        for side in (False, True):
            for name, fn in (("small", small), ("large", large)):
                box: dict[str, Any] = {}

                def background(box: dict[str, Any] = box, tensors: list[Any] = tensors, side: bool = side) -> None:
                    box["copy_s"], box["out"] = copy(tensors, side)

                thread = threading.Thread(target=background)
                thread.start()
                time.sleep(0.05)
                fg = timed(fn)
                thread.join()
                key = f"{name}_beside_{source}_{'side' if side else 'default'}_stream"
                results[key] = {"foreground_s": round(fg, 3), "copy_s": round(box["copy_s"], 3)}
                print(key, results[key], flush=True)
                box.clear()
                torch.cuda.empty_cache()
    # The product's way (storyboard.backends.hf_common.to_device): pageable weights through two reused pinned buffers.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from storyboard.backends.hf_common import to_device

    del pinned
    for slot_mib in (64, 256):
        import storyboard.backends.hf_common as hf

        hf._STAGERS.clear()
        module = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for t in host])
        started = time.perf_counter()
        to_device(module, "cuda", slot_mib=slot_mib)
        results[f"staged_alone_{slot_mib}mib_s"] = round(time.perf_counter() - started, 3)
        del module
        torch.cuda.empty_cache()
    for name, fn in (("small", small), ("large", large)):
        module = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for t in host])
        box = {}

        def staged(box: dict[str, Any] = box, module: Any = module) -> None:
            started = time.perf_counter()
            to_device(module, "cuda")
            box["copy_s"] = time.perf_counter() - started

        thread = threading.Thread(target=staged)
        thread.start()
        time.sleep(0.05)
        fg = timed(fn)
        thread.join()
        results[f"{name}_beside_staged"] = {"foreground_s": round(fg, 3), "copy_s": round(box["copy_s"], 3)}
        del module
        torch.cuda.empty_cache()
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
