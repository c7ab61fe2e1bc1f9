"""End-to-end benchmark: one short (hook + 10 beats, 512x768) through the product's own stages on one GPU.

plan (Qwen2.5-14B-shaped planner), visual (Flux-dev), judge (a 7B LLaVA), video (MMS-TTS voices checked by
whisper-small, LTX-2 clips) and render, each with real-architecture models and random weights, loaded
from disk by the backends the `gpu` profile uses (`run_stages`, one stage at a time). Per stage: wall
seconds, model load, peak VRAM and the stage's own figures from run.json; the floor is the same model
calls made again bare (every pipeline call and `generate` of the stage recorded with its arguments, then
replayed on the still-loaded models right after the stage); total / floor is the ratio the issue asks for.

Random weights cannot write a plan, a verdict or a transcript, so the text models' tokens are forced
(`Forced`): the planner's answer spells the template planner's plan for the same idea, the judge answers
YES, whisper hears the line it checks. The forcing only masks logits, so every token still costs a full
forward pass of the real-size model.

The box's disk cannot hold every model at once: each stage's models are built (not timed) just before
the stage and deleted after it with --lean. The total is the sum of the stage times (what `storyboard
run` would take with every model on disk).

    python bench/e2e_gpu.py --out /tmp/e2e --json e2e.json               # H100/H200, full-size models
    python bench/e2e_gpu.py --size tiny --out /tmp/e2e-tiny              # CPU rehearsal
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_image import gpu_name, sync  # noqa: E402
from bench.random_models import flux, llm, ltx2, report, vits, vlm, whisper_checkpoint  # noqa: E402
from storyboard.context import warming  # noqa: E402

IDEA = "A cat who wants to be a judge"
SECTIONS = {"plan": {"planner"}, "visual": {"image"}, "judge": {"judge", "image"}, "video": {"tts", "qa", "video"}, "render": set()}
EXPECTED: contextvars.ContextVar[str] = contextvars.ContextVar("expected", default="")


class Forced:
    """Forces the tokens of `answer(model)` (then end of text) on every `generate` of a transformers model, and the
    checked line on every whisper decode. Logits are masked, nothing skipped: each token is a full forward."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers  # model class name -> answer text
        self.undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> Forced:
        import transformers
        from transformers import LogitsProcessor, LogitsProcessorList

        answers = self.answers

        class Spell(LogitsProcessor):
            def __init__(self, ids: list[int], start: int) -> None:
                self.ids, self.start = ids, start

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                step = input_ids.shape[1] - self.start
                token = self.ids[min(step, len(self.ids) - 1)]
                forced = scores.new_full(scores.shape, float("-inf"))
                forced[:, token] = 0.0
                return forced

        real_generate = transformers.GenerationMixin.generate

        def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
            answer = answers.get(type(model).__name__)
            if answer is not None:
                tok = self.tokenizers[type(model).__name__]
                ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                start = kwargs["input_ids"].shape[1]
                kwargs["logits_processor"] = LogitsProcessorList([Spell(ids, start)])
                kwargs["max_new_tokens"] = len(ids)
            return real_generate(model, *args, **kwargs)

        self._patch(transformers.GenerationMixin, "generate", generate)
        try:
            import whisper.decoding as decoding

            real_init = decoding.DecodingTask.__init__

            def init(task: Any, model: Any, options: Any) -> None:
                real_init(task, model, options)
                ids = task.tokenizer.encode(" " + EXPECTED.get()) + [task.tokenizer.eot]

                class Hear(decoding.LogitFilter):
                    def apply(self, logits: Any, tokens: Any) -> None:
                        token = ids[min(tokens.shape[1] - task.sample_begin, len(ids) - 1)]
                        logits[:] = float("-inf")  # also over the timestamp rules' choice: the text starts at once
                        logits[:, token] = 0.0

                task.logit_filters.append(Hear())

            self._patch(decoding.DecodingTask, "__init__", init)
            import storyboard.video as video_stage

            real_check = video_stage.check_take

            def check_take(recogniser: Any, wav: Path, line: str, *args: Any, **kwargs: Any) -> Any:
                token = EXPECTED.set(line)
                try:
                    return real_check(recogniser, wav, line, *args, **kwargs)
                finally:
                    EXPECTED.reset(token)

            self._patch(video_stage, "check_take", check_take)  # the name the video stage calls
        except ImportError:
            pass
        self.tokenizers: dict[str, Any] = {}
        return self

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self.undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __exit__(self, *exc: object) -> None:
        for owner, name, value in reversed(self.undo):
            setattr(owner, name, value)


class Recorder:
    """Records every call of the given methods (with arguments) while a stage runs, to replay them bare after it."""

    def __init__(self, targets: list[tuple[Any, str]]) -> None:
        self.targets = targets
        self.calls: list[tuple[contextvars.Context, Any, Any, tuple, dict]] = []
        self.undo: list[tuple[Any, str, Any]] = []
        self.depth = threading_local()

    def __enter__(self) -> Recorder:
        for owner, name in self.targets:
            real = getattr(owner, name)
            self.undo.append((owner, name, real))
            setattr(owner, name, self._wrap(real))
        return self

    def _wrap(self, real: Any) -> Any:
        recorder = self

        @functools.wraps(real)  # the backends read the signature (which arguments the pipeline takes)
        def call(obj: Any, *args: Any, **kwargs: Any) -> Any:
            outer = getattr(recorder.depth, "n", 0) == 0  # a pipeline calling generate inside is one call
            if outer and not warming():  # a warm-up call after a load ahead is no call of the short  # with its context: the line whisper is forced to hear is a context variable
                recorder.calls.append((contextvars.copy_context(), real, obj, args, dict(kwargs)))
            recorder.depth.n = getattr(recorder.depth, "n", 0) + 1
            try:
                return real(obj, *args, **kwargs)
            finally:
                recorder.depth.n -= 1

        return call

    def __exit__(self, *exc: object) -> None:
        for owner, name, real in reversed(self.undo):
            setattr(owner, name, real)

    def replay(self) -> float:
        """Seconds of every recorded call made again, one after another (generators re-seeded)."""
        import torch

        total = 0.0
        for context, real, obj, args, kwargs in self.calls:
            if isinstance(kwargs.get("generator"), torch.Generator):
                kwargs["generator"] = torch.Generator(kwargs["generator"].device).manual_seed(kwargs["generator"].initial_seed())
            sync()
            started = time.perf_counter()
            context.run(real, obj, *args, **kwargs)
            sync()
            total += time.perf_counter() - started
        self.calls.clear()
        return total


def has_ffmpeg() -> bool:
    """The render's ffmpeg is found the way the product finds it ($STORYBOARD_FFMPEG, imageio-ffmpeg, PATH)."""
    from storyboard.errors import PreflightError
    from storyboard.ffmpeg import ffmpeg_exe

    try:
        return bool(ffmpeg_exe())
    except PreflightError:
        return False


def threading_local() -> Any:
    import threading

    return threading.local()


MODELS = {"planner": ("llm", llm), "image": ("flux", flux), "judge": ("vlm", vlm), "tts": ("vits", vits), "qa": ("whisper", whisper_checkpoint),
          "video": ("ltx2", ltx2)}


def model_paths(root: Path, size: str, shm: Path | None = None) -> dict[str, Path]:
    """Where each section's random model is saved; the image and judge models in `shm` (RAM) when given: with the next
    stages' models built before each stage (so they can load ahead), the planner and Flux together, or the judge and
    LTX-2, overfill a 64 GiB disk."""
    paths = {section: root / (f"{name}-{size}.pt" if section == "qa" else f"{name}-{size}") for section, (name, _) in MODELS.items()}
    if shm is not None:
        paths["image"] = shm / paths["image"].name
        paths["judge"] = shm / paths["judge"].name
    return paths


def other_plans() -> list[str]:
    """Template plans of other ideas: what the planner's tokenizer learns from, so a plan costs about as many tokens
    as with Qwen's 152k-token vocabulary (the 400-token test tokenizer needs 2.6x more: 1.4 characters a token)."""
    from storyboard.backends.template_planner import TemplatePlanner
    from storyboard.formats import load_format

    ideas = ["A robot learns to bake bread", "Two pigeons run a bank", "A ghost afraid of the dark", "A dog who runs for mayor",
             "The moon takes a day off", "A teapot that wants to be a kettle", "An owl opens a night school", "A snail wins a race"]
    return [json.dumps(TemplatePlanner({}).plan(idea, load_format("drama10"), seed)) for seed, idea in enumerate(ideas)]


def calibrate_voice(path: Path, chars_per_second: float = 15.0) -> None:
    """Random weights give a random speaking pace (a line lasted 15-25 s in a first rehearsal). Shift the saved VITS's
    stochastic duration predictor (the translation of its last flow, the one that yields the log-durations) so a
    line lasts about as long as a person reads it: the clips then have a real short's lengths."""
    import math

    import torch
    from transformers import VitsModel, VitsTokenizer

    line = "Order in the court, the cat is about to rule on the matter of the missing fish."
    tokenizer, model = VitsTokenizer.from_pretrained(path), VitsModel.from_pretrained(path)
    inputs = tokenizer(line, return_tensors="pt")
    affine = model.duration_predictor.flows[0]  # applied last when sampling: log_duration = (z - translate) / exp(log_scale)
    for _ in range(3):
        torch.manual_seed(0)
        with torch.inference_mode():
            seconds = model(**inputs).waveform.shape[-1] / model.config.sampling_rate
        factor = seconds / (len(line) / chars_per_second)
        with torch.no_grad():
            affine.translate[0] += math.log(factor) * affine.log_scale[0].exp()
    model.save_pretrained(path)


def build(sections: set[str], paths: dict[str, Path], size: str, device: str) -> None:
    """Build (once) the random-weight models of `sections`; the judge stage's image section is already there."""
    from storyboard.backends.hf_common import free_memory

    for section in sorted(sections):
        path = paths[section]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            builder = MODELS[section][1]
            extra: dict[str, Any] = {"device": device} if section in ("planner", "image", "judge", "video") else {}
            if section == "planner":  # a tokenizer as thrifty as a real one on plans (~3.5 characters a token)
                extra.update(vocab_size=1000, texts=other_plans())
            builder(path, size=size, **extra)
            if section == "tts":
                calibrate_voice(path)
            free_memory()


def config_for(paths: dict[str, Path], size: str, device: str, roomy: bool = False) -> dict[str, Any]:
    """The gpu profile with the random models in place (Flux edits as img2img on the same weights: no Kontext).
    `roomy`: a GPU with room for each stage's models in bf16 (80 GB and up): no 4-bit text models, no fp8 storage,
    no VAE tiles, each of which saves memory at some cost in load or call time."""
    from storyboard.profiles import resolve_config

    gpu = device == "cuda" and not roomy
    overrides: dict[str, Any] = {
        "planner": {"backend": "transformers", "model": str(paths.get("planner", "")), "load_in_4bit": gpu, "temperature": 0},
        "image": {"backend": "diffusers", "model": str(paths.get("image", "")), "edit": "img2img", "edit_model": None,
                  "text_encoder_4bit": gpu, "fp8": gpu},
        "judge": {"backend": "vlm", "model": str(paths.get("judge", "")), "load_in_4bit": gpu, "max_retries": 0},
        "tts": {"backend": "transformers", "model": str(paths.get("tts", "")), "models": {}},
        "qa": {"backend": "whisper", "model": str(paths.get("qa", "")), "max_takes": 1},
        "video": {"backend": "ltx2", "model": str(paths.get("video", "")), "fp8": gpu, "fp8_vae": gpu, "vae_tiling": gpu,
                  "text_encoder_4bit": gpu, **({} if size == "full" else {"max_sequence_length": 32, "presets": {"distilled": {"long_side": 64}}})},
    }
    if size == "tiny":
        overrides["image"]["presets"] = {"draft": {"long_side": 64, "steps": 2}}
    config = {**resolve_config("gpu", overrides), "device": device}
    config["image"].pop("edit_model", None)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sb-e2e"))
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--stages", default="plan,visual,judge,video,render")
    parser.add_argument("--lean", action="store_true", help="delete each stage's models after it (a small disk)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--roomy", action="store_true", help="bf16 everywhere: no 4-bit, fp8 or VAE tiles (80 GB GPUs)")
    parser.add_argument("--shm", type=Path, help="a RAM folder (e.g. /dev/shm/sb) for the image model")
    parser.add_argument("--ahead", choices=["auto", "on", "off"], default="auto",
                        help="the load_ahead setting (off: each stage loads its own models; on: also on the CPU)")
    parser.add_argument("--ahead-stages", type=int, default=2, help="the load_ahead_stages setting: how many stages load ahead")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the run (and --json results) an earlier call left under --out: stages split over calls")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("storyboard").setLevel(logging.INFO)  # the stages' own timings, stamped, beside the figures
    import diffusers
    import torch

    from storyboard import ahead
    from storyboard.backends.hf_common import peak_gib, reset_peak
    from storyboard.backends.template_planner import TemplatePlanner
    from storyboard.context import BackendPool
    from storyboard.formats import load_format
    from storyboard.pipeline import create_run, run_stages

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = args.out / "models"
    runs = args.out / "runs"
    if not args.resume:
        shutil.rmtree(runs, ignore_errors=True)
    plan = TemplatePlanner({}).plan(IDEA, load_format("drama10"), 0)
    answers = {"Qwen2ForCausalLM": json.dumps(plan)[1:],  # the planner pre-fills "{"
               "LlavaForConditionalGeneration": "YES"}
    results: dict[str, Any] = {"gpu": gpu_name(), "size": args.size, "roomy": args.roomy, "stages": {}}
    if args.resume and args.json and args.json.is_file():
        results = json.loads(args.json.read_text())
    from transformers import GenerationMixin, VitsModel

    pipelines = ["FluxPipeline", "FluxImg2ImgPipeline", "LTX2ImageToVideoPipeline", "LTX2DFRPipeline", "LTX2LatentUpsamplePipeline"]
    targets = [(getattr(diffusers, name), "__call__") for name in pipelines if hasattr(diffusers, name)]
    targets += [(GenerationMixin, "generate"), (VitsModel, "forward")]
    try:
        import whisper

        targets.append((whisper.model.Whisper, "transcribe"))
    except ImportError:
        pass
    root: Path | None = None
    if args.resume:
        found = sorted(p for p in runs.glob("*") if (p / "plan.json").is_file())
        assert len(found) == 1, f"--resume wants exactly one run under {runs}, found {found}"
        root = found[0]
    paths = model_paths(models, args.size, args.shm)
    no_ffmpeg = not has_ffmpeg()
    import storyboard.pipeline as pipeline
    from storyboard.preflight import check_backends

    current = {"stage": ""}

    def stage_preflight(ctx: Any) -> None:
        """The models are built one stage at a time: each stage checks its own backends (render: none, ffmpeg was found)."""
        bad = [c for c in check_backends(ctx.config) if not c.ok and c.name in SECTIONS[current["stage"]]]
        if bad:
            raise SystemExit("; ".join(f"{c.name}: {c.detail}" for c in bad))
        return None

    pipeline.preflight = stage_preflight  # type: ignore[assignment]
    order = args.stages.split(",")
    config = config_for(paths, args.size, device, args.roomy)
    config["load_ahead"] = args.ahead
    config["load_ahead_stages"] = args.ahead_stages
    # Stages after the current one whose models must exist before it. The random models are built on the GPU, beside
    # what the pool has loaded ahead: on a GPU under 100 GiB, where `auto` loads only one stage ahead anyway (the video
    # models do not fit beside Flux and the judge), building LTX-2 two stages early would not fit either.
    roomy_gpu = device == "cuda" and torch.cuda.get_device_properties(0).total_memory >= 100 * 2**30
    reach = 0 if args.ahead == "off" else args.ahead_stages if roomy_gpu or device == "cpu" else 1
    pool = BackendPool(config)  # one pool across the stages' calls: what loads ahead in one stage is taken by the next
    pending: list[tuple[str, Any, float, float, float | None, float]] = []

    def finish(stage: str, recorder: Any, wall: float, ahead_wait: float, peak: float | None, build_s: float) -> None:
        """Replay the stage's calls bare (its models are still referenced by them), report it, delete its models."""
        floor = recorder.replay() if recorder is not None else 0.0
        manifest = json.loads((root / "run.json").read_text()) if root and (root / "run.json").is_file() else {}
        row = {"wall_s": round(wall, 3), "floor_s": round(floor, 3), "ratio": round(wall / floor, 3) if floor else None,
               "ahead_wait_s": round(ahead_wait, 3), "peak_gib": peak, "build_s_not_counted": round(build_s, 1),
               "figures": manifest.get("stages", {}).get(stage, {})}
        results["stages"][stage] = row
        print(stage, json.dumps(row), flush=True)
        if args.json:  # each stage kept at once: a call cut off at its time limit still leaves the stages it ran
            args.json.write_text(json.dumps(results, indent=2))
        if args.lean:  # the judge may redraw with the image model: it goes after the judge stage
            for section in SECTIONS[stage] - ({"image"} if stage == "visual" else set()):  # loaded models keep their files open
                shutil.rmtree(paths[section], ignore_errors=True) if paths[section].is_dir() else paths[section].unlink(missing_ok=True)

    with Forced(answers) as forced:
        for i, stage in enumerate(order):
            if stage == "render" and no_ffmpeg:
                results["stages"][stage] = {"skipped": "no ffmpeg on this machine"}
                continue
            current["stage"] = stage
            following = order[i + 1] if i + 1 < len(order) else None
            build_started = time.perf_counter()  # this stage's models and the next ones' (they may load ahead)
            wanted = set().union(*(SECTIONS[s] for s in order[i : i + 1 + reach]))
            build({x for x in wanted if not (stage == "judge" and x == "image")}, paths, args.size, device)
            build_s = time.perf_counter() - build_started
            if stage == "plan":
                from transformers import AutoTokenizer

                forced.tokenizers["Qwen2ForCausalLM"] = tok = AutoTokenizer.from_pretrained(paths["planner"])
                answer = answers["Qwen2ForCausalLM"]
                results["plan_tokens"] = {"characters": len(answer), "tokens": len(tok(answer, add_special_tokens=False)["input_ids"])}
            if paths["judge"].exists() and "LlavaForConditionalGeneration" not in forced.tokenizers:  # it may load ahead
                from transformers import AutoProcessor

                forced.tokenizers["LlavaForConditionalGeneration"] = AutoProcessor.from_pretrained(paths["judge"]).tokenizer
            reset_peak()
            recorder = Recorder(targets) if stage != "render" else None
            sync()
            started = time.perf_counter()
            if recorder is not None:
                recorder.__enter__()
            try:
                then = tuple(order[i + 1 :])  # the render too: its segments are encoded while the clips are made
                if stage == "plan":
                    if following:  # as `storyboard run` does: the first stages' models load while the plan is written
                        pool.after_load = functools.partial(ahead.start, pool, config, order[i + 1 :])
                    root = create_run(IDEA, "drama10", config, runs, pool=pool)
                    pool.after_load = None
                else:
                    assert root is not None, "run the plan stage first"
                    summary = run_stages(root, config, stages=(stage,), pool=pool, then=then)
                    assert summary.status in ("ok", "up to date"), summary
                sync()
                wall = time.perf_counter() - started
                # A load ahead still running when the stage ends: when the next stage needs no model built, it starts
                # at once, as in `storyboard run`, and this stage's replay waits until after it. Otherwise the load is
                # waited for and charged to this stage, so the replay and the builds between stages do not hide it.
                go_on = following is not None and pool.loading_ahead() and all(
                    paths[x].exists() for s in order[i + 1 : i + 2 + reach] for x in SECTIONS[s])
                ahead_wait = 0.0 if go_on else pool.wait_ahead()
                sync()
                wall += ahead_wait
            finally:
                if recorder is not None:
                    recorder.__exit__()
            pending.append((stage, recorder, wall, ahead_wait, peak_gib(), build_s))
            if go_on:
                continue
            for done, done_recorder, done_wall, done_wait, done_peak, done_build in pending:
                finish(done, done_recorder, done_wall, done_wait, done_peak, done_build)
            pending.clear()
    total = sum(r.get("wall_s", 0.0) for r in results["stages"].values())
    floor = sum(r.get("floor_s", 0.0) for r in results["stages"].values())
    results.update({"total_s": round(total, 3), "floor_s": round(floor, 3), "ratio": round(total / floor, 3) if floor else None,
                    "final": str(root / "final.mp4") if root and (root / "final.mp4").is_file() else None})
    report(results, args.json)


if __name__ == "__main__":
    main()
