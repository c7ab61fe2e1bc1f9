"""GPU scale-out benchmark: a batch of 4 shorts' image stage on 1 and on 2 GPUs of one host.

Builds the Flux-dev architecture with random weights (as bench/gpu_image.py), writes a profile
that uses it, and runs the product's own `run_batch` (stage-major, `--gpus 0` then `--gpus 0,1`)
over 4 ideas for the `visual` stage: per short one base scene, the hook and ten beats (48
images). Throughput = images per second of the stage; model loads per stage are the batch
summary's counters.

    python bench/gpu_batch.py --out /tmp/sb-batch --json result.json      # a 2-GPU host

The GPU box has no ffmpeg; the later stages need it, so only the GPU stage runs, and the
preflight's ffmpeg check is left out here (the backend checks stay).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import storyboard.pipeline as pipeline  # noqa: E402
from bench.random_models import flux, report  # noqa: E402
from storyboard.batch import run_batch  # noqa: E402
from storyboard.preflight import check_backends  # noqa: E402

IDEAS = ["A cat who wants to be a judge", "A robot learns to bake bread", "Two pigeons run a bank", "A ghost afraid of the dark"]


def backends_only(ctx) -> None:  # noqa: ANN001 - the preflight hook's signature
    bad = [c for c in check_backends(ctx.config) if not c.ok]
    if bad:
        raise SystemExit("; ".join(f"{c.name}: {c.detail}" for c in bad))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sb-batch"))
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--quality", default="draft")
    parser.add_argument("--gpu-sets", default="0;0,1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / f"flux-{args.size}"
    if not (model / "model_index.json").is_file():
        flux(model, size=args.size, device="cuda" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    profile = args.out / "bench-profile.yaml"
    profile.write_text(json.dumps({"name": "bench", "device": "cuda" if torch.cuda.is_available() else "cpu", "planner": {"backend": "template"},
                                   "image": {"backend": "diffusers", "model": str(model), "edit": "img2img", "quality": args.quality},
                                   "judge": {"backend": "heuristic"}, "tts": {"backend": "piper"}, "video": {"backend": "kenburns"}}))
    ideas = args.out / "ideas.txt"
    ideas.write_text("\n".join(IDEAS) + "\n")
    pipeline.preflight = backends_only  # type: ignore[assignment]
    results = {"gpus_on_host": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "quality": args.quality, "runs": []}
    for gpus in args.gpu_sets.split(";"):
        out = args.out / f"runs-{gpus.replace(',', '_')}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = run_batch(ideas, out, profile=str(profile), gpus=gpus, stages=("visual",))
        seconds = time.perf_counter() - started
        images = summary["calls"].get("image.draw", 0) + summary["calls"].get("image.base", 0)
        row = {"gpus": gpus, "status": summary["status"], "failed": summary["failed"], "seconds": round(seconds, 2),
               "images": images, "images_per_s": round(images / seconds, 4), "loads": summary["loads"]}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    if len(results["runs"]) == 2:
        results["speedup"] = round(results["runs"][1]["images_per_s"] / results["runs"][0]["images_per_s"], 3)
    report(results, args.json)


if __name__ == "__main__":
    main()
