"""GPU benchmark of the video backend: real-architecture LTX-2 (19B transformer, video and audio VAEs,
vocoder, connectors) with random weights, through the product's `ltx2` backend.

One call does the whole measurement for the variants asked:
1. build the pipeline with random weights and `save_pretrained` it (kept under --out between calls);
2. load it through the backend (`from_pretrained`, prompts encoded first, text encoder released);
3. per case (size, frames, preset, renderer): seconds per clip through `backend.animate` (pipeline
   call + frames scaled and encoded to H.264/FLAC) against the bare pipeline call with the very
   same arguments (captured from the backend's call), peak GPU memory;
4. stage throughput: a short's 11 clips through the backend with its 2 workers (one clip on the GPU
   while the previous one is encoded), against 11 bare calls, in the order --stage-order gives
   (ways of handing frames to the encoder and bare calls, side by side in one call).

Random weights make every frame noise, the worst case for H.264 (about 30 MB per 5 s clip): the
per-call figures carry that encode; the stage figure shows it hidden behind the next clip.

    python bench/gpu_video.py --out outputs/bench-ltx2 --variants fp8 --json fp8.json      # H100/H200
    python bench/gpu_video.py --size tiny --out /tmp/ltx2-tiny                              # CPU smoke test

The text encoder's width and depth are Gemma-3-12B's (what the connectors read) with a shrunk
attention/MLP, so the checkpoint fits the box's disk; prompts are encoded before clips are timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_image import gpu_name, sync  # noqa: E402
from bench.random_models import build_once, ltx2, report  # noqa: E402
from storyboard.backends import ClipRequest  # noqa: E402
from storyboard.backends.diffusers_video import frame_count  # noqa: E402
from storyboard.backends.hf_common import peak_gib, reset_peak  # noqa: E402
from storyboard.backends.ltx2_video import LTX2Video  # noqa: E402

# (name, run width, run height, long side, seconds, quality, renderer)
CASES = {
    "full": [
        ("512x768-121f-distilled-i2v", 512, 768, 768, 5.0, "distilled", "i2v"),
        ("512x768-121f-distilled-a2v", 512, 768, 768, 5.0, "distilled", "a2v"),
        ("512x768-121f-distilled-sfx", 512, 768, 768, 5.0, "distilled", "sfx"),
        ("512x768-217f-distilled-i2v", 512, 768, 768, 9.0, "distilled", "i2v"),
        ("704x1280-121f-distilled-i2v", 704, 1280, 1280, 5.0, "distilled", "i2v"),
        ("512x768-121f-full-i2v", 512, 768, 768, 5.0, "full", "i2v"),
    ],
    "tiny": [
        ("32x64-25f-distilled-i2v", 32, 64, 64, 1.0, "distilled", "i2v"),
        ("32x64-25f-distilled-a2v", 32, 64, 64, 1.0, "distilled", "a2v"),
        ("32x64-25f-full-i2v", 32, 64, 64, 1.0, "full", "i2v"),
    ],
}


def inputs(root: Path, width: int, height: int) -> tuple[Path, Path]:
    """A beat image and 4.5 s of voice-like audio (harmonics under a syllable envelope, 22.05 kHz mono)."""
    from PIL import Image

    image = root / f"beat_{width}x{height}.png"
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    Image.fromarray((np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2) * 255).astype(np.uint8)).save(image)
    rate = 22050
    t = np.arange(int(rate * 4.5)) / rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * 0.2
    speech = root / "speech.wav"
    with wave.open(str(speech), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((voice * 32767).astype(np.int16).tobytes())
    return image, speech


class Capture:
    """Records the arguments of the backend's pipeline calls, so the bare call uses the very same ones."""

    def __init__(self) -> None:
        from diffusers import LTX2DFRPipeline, LTX2ImageToVideoPipeline

        self.classes = [LTX2ImageToVideoPipeline, LTX2DFRPipeline]
        self.real = {cls: cls.__call__ for cls in self.classes}
        self.last: tuple[Any, Any, dict[str, Any]] | None = None
        # With `timed` on (single calls only: it waits for the GPU at each edge), where a backend call's seconds go:
        # (start, end) of its pipeline call and the seconds of the VAE's decode within it.
        self.timed = False
        self.spans: list[tuple[float, float]] = []
        self.decodes: list[float] = []
        for cls in self.classes:
            cls.__call__ = self._wrap(cls)
        from diffusers import AutoencoderKLLTX2Video

        self.vae_class, self.real_decode = AutoencoderKLLTX2Video, AutoencoderKLLTX2Video.decode

        def decode(vae: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.timed:
                return self.real_decode(vae, *args, **kwargs)
            sync()
            started = time.perf_counter()
            out = self.real_decode(vae, *args, **kwargs)
            sync()
            self.decodes.append(time.perf_counter() - started)
            return out

        AutoencoderKLLTX2Video.decode = decode

    def _wrap(self, cls: type) -> Any:
        real = self.real[cls]

        def call(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.last = (real, pipe, dict(kwargs))
            if not self.timed:
                return real(pipe, *args, **kwargs)
            sync()
            started = time.perf_counter()
            out = real(pipe, *args, **kwargs)
            sync()
            self.spans.append((started, time.perf_counter()))
            return out

        return call

    def close(self) -> None:
        """Put the real calls back and drop the last pipeline (it would keep a variant's weights on the GPU)."""
        for cls in self.classes:
            cls.__call__ = self.real[cls]
        self.vae_class.decode = self.real_decode
        self.last = None

    def bare(self, seed: int) -> float:
        """Seconds of the last captured call made again directly (a fresh generator with the same seed)."""
        import torch

        real, pipe, kwargs = self.last  # type: ignore[misc]
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
        sync()
        started = time.perf_counter()
        real(pipe, **kwargs)
        sync()
        return time.perf_counter() - started


def timed_animate(backend: Any, request: Any, out: Path, phases: list[dict[str, float]] | None = None, capture: Capture | None = None) -> float:
    """Seconds of one `backend.animate`. With `phases` (and `capture`): the call is taken apart into what came before
    its pipeline call, the pipeline call itself (the VAE's decode within it), and what came after (frames converted,
    copied and encoded; `encode_wait_s`: waiting for the encoder's child), appended to `phases`."""
    if phases is None or capture is None:
        sync()
        started = time.perf_counter()
        backend.animate(request, out)
        sync()
        return time.perf_counter() - started
    make, waits = backend._outgoing, []

    def outgoing(*args: Any) -> Any:
        made = make(*args)
        wait = made.wait

        def timed_wait() -> None:
            begun = time.perf_counter()
            try:
                wait()
            finally:
                waits.append(time.perf_counter() - begun)

        made.wait = timed_wait
        return made

    capture.timed, capture.spans, capture.decodes = True, [], []
    backend._outgoing = outgoing
    try:
        sync()
        started = time.perf_counter()
        backend.animate(request, out)
        sync()
        ended = time.perf_counter()
    finally:
        capture.timed = False
        del backend._outgoing  # the class's method again
    (first, _), (_, last) = capture.spans[0], capture.spans[-1]
    phases.append({"before_s": first - started, "pipeline_s": sum(b - a for a, b in capture.spans), "decode_s": sum(capture.decodes),
                   "after_s": ended - last, "encode_wait_s": sum(waits), "total_s": ended - started})
    return ended - started


@contextlib.contextmanager
def rgb_frames() -> Any:
    """The backend as it was before frames were converted to YUV 4:2:0 on the GPU: RGB bytes to the host, converted
    by the encoder."""
    import storyboard.backends.diffusers_video as video

    planar = video.yuv420
    video.yuv420 = video.quantise
    try:
        yield
    finally:
        video.yuv420 = planar


def variant(root: Path, model: Path, name: str, options: dict[str, Any], cases: list[tuple], repeats: int, device: str,
            stage_clips: int, stage_order: list[str], on_row: Any = None, rgb_too: bool = False, breakdown: bool = False) -> dict[str, Any]:
    capture = Capture()
    settings = {"backend": "ltx2", "model": str(model), "device": device, **options,
                "presets": {"distilled": {}, "full": {}}}
    backend = LTX2Video(settings)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"variant": name, "options": options, "cases": []}
    requests = []
    for case, width, height, _long, seconds, _quality, renderer in cases:
        image, speech = inputs(root, width, height)
        requests.append(ClipRequest(number=len(requests), renderer=renderer, image=image, audio=speech if renderer == "a2v" else None,
                                    duration=seconds, width=width, height=height, fps=24, seed=len(requests), prompt=f"{case}: a cat judge bangs a gavel",
                                    previous_clip=out / "warmup.mp4" if renderer == "sfx" else None))
    reset_peak()
    with backend:
        for part in ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder"):
            module = getattr(backend.pipe, part)
            sizes: dict[str, float] = {}
            for tensor in module.parameters():
                sizes[f"{tensor.dtype}@{tensor.device}"] = sizes.get(f"{tensor.dtype}@{tensor.device}", 0.0) + tensor.numel() * tensor.element_size() / 2**30
            print(part, {k: round(v, 2) for k, v in sizes.items()}, flush=True)
        backend.prepare([r.prompt for r in requests])
        results["figures"] = dict(backend.figures)
        if on_row:
            on_row(results)
        first = True
        for request, (case, _w, _h, long_side, _s, quality, _r) in zip(requests, cases, strict=True):
            backend.preset_name = quality
            backend.settings["presets"][quality]["long_side"] = long_side
            if first:  # warm-up (kernels, allocator), also the clip the sfx case continues from
                backend.animate(request, out / "warmup.mp4")
                first = False
            if not repeats:
                continue
            reset_peak()
            through, bare, through_rgb, phases = [], [], [], []
            for _ in range(1 if quality == "full" else repeats):  # 30 guided steps: one is enough
                through.append(timed_animate(backend, request, out / f"{case}.mp4", phases if breakdown else None, capture))
                bare.append(capture.bare(request.seed))
                if rgb_too:
                    with rgb_frames():
                        through_rgb.append(timed_animate(backend, request, out / f"{case}.mp4"))
            row = {"case": case, "frames": capture.last[2]["num_frames"], "size": [capture.last[2]["width"], capture.last[2]["height"]],
                   "backend_s": round(statistics.median(through), 3), "bare_s": round(statistics.median(bare), 3),
                   "overhead": round(statistics.median(through) / statistics.median(bare) - 1, 4), "peak_gib": peak_gib(),
                   "backend_runs": [round(x, 3) for x in through], "bare_runs": [round(x, 3) for x in bare]}
            if phases:  # the backend's call against the pipeline call inside it, run by run: no drift between two calls
                row["phases"] = {key: [round(p[key], 3) for p in phases] for key in phases[0]}
                row["paired_overhead"] = round(statistics.median(p["total_s"] / p["pipeline_s"] - 1 for p in phases), 4)
            if through_rgb:  # the frames sent to the encoder as RGB, converted there (the backend before 2026-11-23, session 21)
                row["backend_rgb_s"] = round(statistics.median(through_rgb), 3)
                row["overhead_rgb"] = round(statistics.median(through_rgb) / statistics.median(bare) - 1, 4)
            results["cases"].append(row)
            print(json.dumps(row), flush=True)
            if on_row:
                on_row(results)
        if not stage_clips:
            results["stage_figures"] = backend.stage_figures()
            capture.close()
            return results
        # Stage throughput: a short's clips with the backend's workers (GPU and encoding overlap) against bare calls,
        # in the order asked, so drift on the machine shows between repeats of a mode.
        request, (case, _w, _h, long_side, _s, quality, _r) = requests[0], cases[0]
        backend.preset_name = quality
        backend.settings["presets"][quality]["long_side"] = long_side
        if capture.last is None or capture.last[2]["num_frames"] != frame_count(request.duration, 24, backend.temporal()):
            backend.animate(request, out / "stage_warmup.mp4")  # the bare calls repeat the stage's own arguments
        batch = [ClipRequest(**{**request.__dict__, "number": i, "seed": 100 + i}) for i in range(stage_clips)]
        results["stage_runs"] = []
        for mode in stage_order:
            row = stage_run(backend, capture, batch, out, mode)
            results["stage_runs"].append(row)
            print(json.dumps(row), flush=True)
            if on_row:
                on_row(results)
        results["stage_figures"] = backend.stage_figures()
        capture.close()
    return results


# Stage modes: how the clips' frames reach the encoder. "beside" is the product's way (each VAE tile's frames, as
# planar YUV 4:2:0, copied to the host and encoded as they are decoded, the rest beside the next clip's call; the
# encoder's child off two cores at nice 10); "beside-rgb" sends RGB frames that the encoder converts (the way before
# 2026-11-23, session 21); "all-cores" lets the encoder's child on every core; "x4"/"x2" give x264 that many threads;
# "no-encode" copies the frames but the child only reads them; "no-copy" neither copies nor encodes (the turns alone,
# with two workers), "-1" with one worker. (The "in-turn", "before", "idle" and "callers" modes in BENCHMARKS.md ran
# before 2026-11-24: the copy inside the turn, a SCHED_IDLE encoder, each call on its caller's thread; those ways left
# the backend afterwards.) "bare"/"bare-thread": the stage's pipeline calls made directly, from the main thread or
# from one worker thread.
BESIDE = {"spare": 2, "threads": 0, "encode": "x264", "workers": 2, "rgb": False}
MODES = {"beside": BESIDE, "beside-rgb": {**BESIDE, "rgb": True}, "all-cores": {**BESIDE, "spare": 0},
         "x4": {**BESIDE, "threads": 4}, "x2": {**BESIDE, "threads": 2},
         "no-encode": {**BESIDE, "encode": "read"}, "no-copy": {**BESIDE, "encode": "none"},
         "no-copy-1": {**BESIDE, "encode": "none", "workers": 1}}


def read_only(frames: np.ndarray, *args: Any, **kwargs: Any) -> int:
    """In the encoder's child for "no-encode": touch every byte of the frames as they come, encode nothing."""
    return int(sum(int(frames[i].sum(dtype=np.uint64)) for i in range(len(frames))) % 251)


class NoFrames:
    """For "no-copy": a clip's frames go nowhere."""

    made = 0

    def decoded(self, video: Any) -> None:
        pass

    def add(self, video: Any, start: int) -> None:
        pass

    def finish(self, audio: Any, rate: int) -> float:
        return 0.0

    def wait(self) -> None:
        pass

    def abandon(self) -> None:
        pass


def stage_run(backend: Any, capture: Capture, batch: list[Any], out: Path, mode: str) -> dict[str, Any]:
    import importlib

    import storyboard.backends.diffusers_video as video
    from storyboard.media import Encoder, write_clip

    if mode in ("bare", "bare-thread"):
        started = time.perf_counter()
        if mode == "bare":
            bare = sum(capture.bare(r.seed) for r in batch)
        else:
            with ThreadPoolExecutor(1) as one:
                bare = sum(one.submit(capture.bare, r.seed).result() for r in batch)
        return {"mode": mode, "clips": len(batch), "seconds": round(bare, 3), "wall_s": round(time.perf_counter() - started, 3)}
    how = MODES[mode]
    backend.settings["encode_threads"] = how["threads"]
    if backend.encoder.spare_cores != how["spare"]:
        backend.encoder.close()
        backend.encoder = Encoder(spare_cores=how["spare"])
        backend.encoder.submit_frames((1, 64, 64, 3), lambda into: None, write_clip, out / "encoder_warmup.mp4", 24, (64, 64), None,
                                      48000, 0.05)()  # its child started before the clock
    if how["encode"] == "read":  # by its package name, so the child can import it
        video.write_clip = importlib.import_module("bench.gpu_video").read_only
    elif how["encode"] == "none":
        backend._outgoing = lambda *args: NoFrames()
    backend.timeline.clear()
    sync()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(how["workers"]) as pool, rgb_frames() if how["rgb"] else contextlib.nullcontext():
            list(pool.map(lambda r: backend.animate(r, out / f"stage_{r.number}.mp4"), batch))
        sync()
        seconds = time.perf_counter() - started
    finally:
        video.write_clip = write_clip
        vars(backend).pop("_outgoing", None)
        backend.settings["encode_threads"] = 0
    return {"mode": mode, "clips": len(batch), "workers": how["workers"], "seconds": round(seconds, 3), **backend.gpu_gaps()}


def text_encoder(root: Path, device: str, size: str) -> dict[str, Any]:
    """Gemma-3-12B's text model (the LTX-2 text encoder) with random weights, loaded through the product's transformers
    loader in bf16 and in nf4 (`text_encoder_4bit`): load seconds, GPU memory held, seconds and peak for a short's
    12 prompts at LTX-2's 1024-token prompt length with every hidden state returned (what the connectors read).
    The random tokenizer's vocabulary is small: the real 262k-token embedding (2 GiB in bf16; bitsandbytes leaves
    embeddings unquantised) is not in these figures."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from bench.random_models import tokenizer
    from storyboard.backends.hf_common import free_memory, load_pretrained

    path = root / f"gemma3-12b-{size}"
    if not (path / "config.json").is_file():
        tok = tokenizer()
        text = ({"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 8,
                 "head_dim": 256} if size == "full" else {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                                           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16})
        config = Gemma3Config(text_config={"vocab_size": len(tok), "max_position_embeddings": 2048, "sliding_window": 1024,
                                           "pad_token_id": tok.pad_token_id, **text},
                              vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "image_size": 28, "patch_size": 14},
                              mm_tokens_per_image=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(config).to(torch.bfloat16 if device != "cpu" else torch.float32)
        model.save_pretrained(path, max_shard_size="20GB")
        tok.save_pretrained(path)
        del model
        free_memory()
    rows = []
    for nf4 in (False, True):
        if nf4 and device == "cpu":
            continue
        reset_peak()
        sync()
        started = time.perf_counter()
        tok, model = load_pretrained({"device": device}, str(path), "text encoder", "Gemma3ForConditionalGeneration", "AutoTokenizer", nf4)
        sync()
        load_s = time.perf_counter() - started
        held = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else 0.0
        prompts = [f"beat {i}: a cat judge bangs a gavel in a crowded courtroom" for i in range(12)]
        times = []
        for _ in range(2):  # the first pass warms kernels up
            sync()
            started = time.perf_counter()
            with torch.inference_mode():
                for prompt in prompts:
                    ids = tok(prompt, padding="max_length", max_length=1024, truncation=True, return_tensors="pt").to(device)
                    states = model.model.language_model(**ids, output_hidden_states=True).hidden_states
                    torch.stack(states, dim=-1).cpu()
            sync()
            times.append(time.perf_counter() - started)
        rows.append({"text_encoder": "nf4" if nf4 else "bf16", "load_s": round(load_s, 2), "held_gib": round(held, 2),
                     "prompts_s": round(times[-1], 3), "hidden_layers": len(states), "peak_gib": peak_gib()})
        print(json.dumps(rows[-1]), flush=True)
        del model, states
        free_memory()
    return {"text_encoder": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-ltx2"))
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="fp8,bf16")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all for the size)")
    parser.add_argument("--stage-clips", type=int, default=11, help="clips in the throughput run (hook + 10 beats)")
    parser.add_argument("--stage-variants", default="", help="variants that get the throughput run (default: all)")
    parser.add_argument("--stage-order", default="bare,beside,bare,beside",
                        help=f"stage runs in this order: {', '.join([*MODES, 'bare', 'bare-thread'])}")
    parser.add_argument("--rgb-too", action="store_true", help="per case, also time the backend sending RGB frames to the encoder")
    parser.add_argument("--breakdown", action="store_true",
                        help="per case, take each backend call apart (before / pipeline call / VAE decode / after), waiting for the GPU at each edge")
    parser.add_argument("--text-encoder", action="store_true", help="only the Gemma-3-12B text encoder, bf16 against nf4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.text_encoder:
        report({"gpu": gpu_name(), **text_encoder(args.out, device, args.size)}, args.json)
        return
    model, build_s = build_once(args.out, f"ltx2-{args.size}", ltx2, size=args.size, device=device)
    cases = [c for c in CASES[args.size] if not args.cases or c[0] in args.cases.split(",")]
    known = {"bf16": {}, "fp8": {"fp8": True}, "fp8-nf4": {"fp8": True, "text_encoder_4bit": True}, "fp8-tiled": {"fp8": True, "vae_tiling": True},
             "fp8-tiled-vae8": {"fp8": True, "vae_tiling": True, "fp8_vae": True},
             "fp8-tiled-t48": {"fp8": True, "vae_tiling": True, "vae_temporal_tile_frames": 48},
             "fp8-tiled-vae8-t48": {"fp8": True, "vae_tiling": True, "fp8_vae": True, "vae_temporal_tile_frames": 48},
             "gpu-profile": {"fp8": True, "vae_tiling": True, "fp8_vae": True, "vae_temporal_tile_frames": 48, "text_encoder_4bit": True}}
    for threads in (1, 2, 4, 8):  # x264 threads of the clip encoder beside the pipeline
        known[f"gpu-profile-x{threads}"] = {**known["gpu-profile"], "encode_threads": threads}
    results = {"gpu": gpu_name(), "size": args.size, "build_and_save_s": round(build_s, 1), "variants": []}

    def keep(partial: dict[str, Any]) -> None:  # what is measured so far survives a call cut short
        if args.json:
            args.json.write_text(json.dumps({**results, "variants": [*results["variants"], partial]}, indent=2))

    for name in args.variants.split(","):
        results["variants"].append(variant(args.out, model, name, known[name], cases, args.repeats, device,
                                              args.stage_clips if not args.stage_variants or name in args.stage_variants.split(",") else 0,
                                              args.stage_order.split(","), keep, args.rgb_too, args.breakdown))
    report(results, args.json)


if __name__ == "__main__":
    main()
