"""Why is the planner's first `generate` slower than the same call made again? Decode speed of a
Qwen2.5-14B-shaped model (random weights, bf16, one GPU), first and second call in a fresh process, per KV
cache / allocator variant:

    dynamic      transformers' default DynamicCache (what the planner used): the cache grows by torch.cat
    expandable   the same with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    static       a StaticCache sized once for prompt + answer, no compile
    compiled     a StaticCache with transformers' automatic compile of the decoding step
    NAME-4bit    any of these with the weights in nf4 (bitsandbytes), as the gpu profile loads the planner

Each variant runs in its own process (a fresh CUDA allocator), prompt and answer tokens forced as in the
end-to-end benchmark, sampling settings as the product's planner.

    python bench/planner_decode.py --model /tmp/sbdev/llm-full --json decode.json     # builds the model once
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("dynamic", "expandable", "static", "compiled")


def child(model_path: Path, variant: str, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    from bench.gpu_image import sync

    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a rehearsal with a tiny model
    started = time.perf_counter()
    quant = variant.endswith("-4bit")  # the gpu profile's planner: nf4 weights as the product loads them
    variant = variant.removesuffix("-4bit")
    from storyboard.backends.hf_common import bnb_4bit

    extra_load = {"quantization_config": bnb_4bit(torch.bfloat16)} if quant else {}
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16, device_map=device, **extra_load)
    load_s = time.perf_counter() - started
    vocab = model.config.vocab_size
    prompt = torch.randint(10, vocab - 10, (1, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)
    answer = torch.randint(10, vocab - 10, (new_tokens,), generator=torch.Generator().manual_seed(1)).tolist()

    class Spell(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            forced = scores.new_full(scores.shape, float("-inf"))
            forced[:, answer[min(input_ids.shape[1] - prompt_tokens, new_tokens - 1)]] = 0.0
            return forced

    extra: dict[str, Any] = {}
    if variant in ("static", "compiled"):
        extra["cache_implementation"] = "static"
    if variant == "static":
        extra["disable_compile"] = True
    row: dict[str, Any] = {"load_s": round(load_s, 2)}
    for call in ("first", "second"):
        torch.manual_seed(0)
        sync()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=True, temperature=0.7, max_time=600, logits_processor=LogitsProcessorList([Spell()]),
                                 pad_token_id=0, **extra)
        sync()
        seconds = time.perf_counter() - started
        made = out.shape[1] - prompt_tokens
        row[call] = {"seconds": round(seconds, 2), "new_tokens": made, "tokens_per_s": round(made / seconds, 1)}
    if device == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the model directory (built there if missing)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--prompt-tokens", type=int, default=3000)
    parser.add_argument("--new-tokens", type=int, default=300)
    parser.add_argument("--size", default="full", help="tiny: a CPU rehearsal")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("ROW " + json.dumps(child(args.model, args.child, args.prompt_tokens, args.new_tokens)), flush=True)
        return
    from bench.gpu_image import gpu_name
    from bench.random_models import llm, report

    if not args.model.exists():
        started = time.perf_counter()
        llm(args.model, size=args.size, device="cuda" if args.size == "full" else "cpu", vocab_size=1000)
        print(f"built {args.model} in {time.perf_counter() - started:.0f} s (not timed)", flush=True)
    results: dict[str, Any] = {"gpu": gpu_name(), "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "variants": {}}
    for variant in args.variants.split(","):
        env = dict(os.environ)
        if variant.startswith("expandable"):
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        done = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--child", variant, "--prompt-tokens", str(args.prompt_tokens),
                               "--new-tokens", str(args.new_tokens)], env=env, capture_output=True, text=True)
        rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
        results["variants"][variant] = json.loads(rows[0]) if rows else {"error": done.stderr[-2000:]}
        print(variant, json.dumps(results["variants"][variant]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    report(results, args.json)


if __name__ == "__main__":
    main()
