"""Local-model backends (transformers planner, diffusers images, VLM judge) with tiny random-weight models.

Each model is built in the test from a config, saved, and loaded back through the backend's
own `from_pretrained` path, on the CPU: the same code users run on a GPU.
"""

from __future__ import annotations

import functools
import gc
import json
import weakref
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import tiny_models  # noqa: E402
from PIL import Image  # noqa: E402

from storyboard.backends import register  # noqa: E402
from storyboard.backends.vlm_judge import VLMJudge  # noqa: E402
from storyboard.errors import InputError, PreflightError, StageError  # noqa: E402
from storyboard.formats import load_format  # noqa: E402
from storyboard.pipeline import create_run, run_stages  # noqa: E402
from storyboard.preflight import check_backends  # noqa: E402
from storyboard.profiles import resolve_config  # noqa: E402

IDEA = "A cat who wants to be a judge"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llm": tiny_models.llm(root / "llm"),
        "vlm": tiny_models.vlm(root / "vlm"),
        "flux": tiny_models.flux(root / "flux"),
        "kontext": tiny_models.flux(root / "kontext", pipeline="FluxKontextPipeline"),
    }


def image_settings(models: dict[str, Path], **extra: object) -> dict:
    return {"backend": "diffusers", "model": str(models["flux"]), "edit_model": str(models["kontext"]), "device": "cpu",
            "presets": {"draft": {"steps": 2, "long_side": None}}, **extra}


def test_transformers_planner_rejects_random_output_and_writes_no_plan(models: dict[str, Path], tmp_path: Path) -> None:
    config = resolve_config("offline", {"planner": {"backend": "transformers", "model": str(models["llm"]), "device": "cpu",
                                                    "max_new_tokens": 24, "retries": 1}})
    with pytest.raises(StageError) as caught:
        create_run(IDEA, "drama10", config, tmp_path)
    message = str(caught.value)
    assert "transformers planner gave no valid plan in 2 attempts" in message
    assert "max_new_tokens=24" in message or "not valid JSON" in message
    assert not list(tmp_path.rglob("plan.json"))


def test_missing_model_is_named_with_the_command_that_fetches_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    config = resolve_config("offline", {"image": {"backend": "diffusers", "model": "black-forest-labs/FLUX.1-dev"}})
    image = next(c for c in check_backends(config) if c.name == "image")
    assert not image.ok and "black-forest-labs/FLUX.1-dev is not in the local cache" in image.detail
    assert "hf download black-forest-labs/FLUX.1-dev" in image.detail
    from storyboard.backends.hf_common import resolve_model

    with pytest.raises(PreflightError, match="does not exist"):
        resolve_model(str(tmp_path / "no-such-model"), "image")


def spy_calls(monkeypatch: pytest.MonkeyPatch, cls: type, log: list[dict]) -> None:
    """Record what a pipeline class is called with, then run the real call."""
    real = cls.__call__

    @functools.wraps(real)  # keeps the signature the backend inspects
    def recording(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        log.append({"class": cls.__name__, "image": kwargs.get("image"), "width": kwargs.get("width"), "height": kwargs.get("height"),
                    "steps": kwargs.get("num_inference_steps")})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", recording)


def test_visual_and_judge_stages_on_tiny_flux_and_vlm(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import FluxKontextPipeline, FluxPipeline

    calls: list[dict] = []
    spy_calls(monkeypatch, FluxPipeline, calls)
    spy_calls(monkeypatch, FluxKontextPipeline, calls)
    config = resolve_config("offline", {"image": image_settings(models),
                                        "judge": {"backend": "vlm", "model": str(models["vlm"]), "device": "cpu", "max_retries": 1}})
    root = create_run(IDEA, "drama10", config, tmp_path)
    plan = json.loads((root / "plan.json").read_text())
    plan["beats"][4]["setting_override"] = "A rainy rooftop at night"
    (root / "plan.json").write_text(json.dumps(plan))
    summary = run_stages(root, config, stages=("visual", "judge"))
    assert summary.status == "ok", summary
    assert summary.stages["visual"]["loads"] == 1 and summary.calls["image.load"] == 2  # once in visual, once in judge (redraws)
    assert summary.calls["judge.load"] == 1
    manifest = json.loads((root / "run.json").read_text())

    # Images at the run's size; two base scenes (the plan's setting and beat 5's override).
    bases = sorted((root / "beats").glob("base_*.png"))
    assert len(bases) == 2
    for number in range(11):
        beat_type = "hook" if number == 0 else plan["beats"][number - 1]["type"]
        with Image.open(root / "beats" / f"beat_{number:02d}_{beat_type}.png") as img:
            assert img.size == (plan["width"], plan["height"])
    # The bases and the hook come from text; every beat is a Kontext edit of its setting's base.
    # (The random judge says NO to everything: each is redrawn once, the hook from text again.)
    text_calls = [c for c in calls if c["class"] == "FluxPipeline"]
    edit_calls = [c for c in calls if c["class"] == "FluxKontextPipeline"]
    assert len(text_calls) == 2 + 1 + 1 and all(c["image"] is None for c in text_calls)
    assert len(edit_calls) == 10 + 10 and all(c["image"] is not None and c["steps"] == 2 for c in edit_calls)
    beat5 = manifest["artifacts"][f"beats/beat_05_{plan['beats'][4]['type']}.png"]["inputs"]
    beat4 = manifest["artifacts"][f"beats/beat_04_{plan['beats'][3]['type']}.png"]["inputs"]
    assert beat5["base"] != beat4["base"] and beat5["setting"] == "A rainy rooftop at night"
    # One load of each model per stage; timings and peak memory recorded.
    visual = manifest["stages"]["visual"]
    assert visual["load_s"] >= 0 and "peak_vram_gib" in visual and visual["beats"] == list(range(11))
    assert all(manifest["artifacts"][k]["seconds"] > 0 for k in manifest["artifacts"] if k.startswith("beats/beat_"))
    # A random VLM never answers YES: every beat is redrawn once (max_retries 1), then accepted and flagged.
    verdicts = json.loads((root / "judge.json").read_text())["beats"]
    assert all(v["flagged"] and len(v["attempts"]) == 2 for v in verdicts.values())
    assert "peak_vram_gib" in manifest["stages"]["judge"]


@register("judge", "scripted-vlm")
class ScriptedVLM(VLMJudge):
    """The real VLM judge (tiny model loaded through from_pretrained) with scripted answers: NO, then YES."""

    loads = 0
    asked: list[str] = []

    def __enter__(self) -> ScriptedVLM:
        ScriptedVLM.loads += 1
        return super().__enter__()

    def answer(self, image: Path, prompt: str) -> str:
        super().answer(image, prompt)  # the real model runs on the real image
        ScriptedVLM.asked.append(prompt)
        return "NO. The judge has six fingers." if len(ScriptedVLM.asked) % 2 else "YES, matches."


def test_vlm_judge_no_then_yes_redraws_once_with_one_load(models: dict[str, Path], tmp_path: Path) -> None:
    config = resolve_config("offline", {"image": image_settings(models, edit="img2img"),
                                        "judge": {"backend": "scripted-vlm", "model": str(models["vlm"]), "device": "cpu", "max_retries": 2}})
    root = create_run(IDEA, "drama10", config, tmp_path)
    assert run_stages(root, config, stages=("visual",)).status == "ok"
    before = json.loads((root / "run.json").read_text())
    ScriptedVLM.loads, ScriptedVLM.asked = 0, []
    assert run_stages(root, config, stages=("judge",)).status == "ok"
    after = json.loads((root / "run.json").read_text())
    verdicts = json.loads((root / "judge.json").read_text())["beats"]
    assert ScriptedVLM.loads == 1
    assert all(v["ok"] and not v["flagged"] and [a["ok"] for a in v["attempts"]] == [False, True] for v in verdicts.values())
    assert verdicts["3"]["attempts"][0]["reason"] == "The judge has six fingers."
    assert verdicts["3"]["attempts"][0]["seed"] != verdicts["3"]["attempts"][1]["seed"]
    changed = [k for k in after["artifacts"] if k.startswith("beats/beat_") and after["artifacts"][k]["hash"] != before["artifacts"][k]["hash"]]
    assert len(changed) == 11  # every beat redrawn once with its new seed
    assert any("mouth is closed" in p for p in ScriptedVLM.asked) and any("Exactly 1 main character" in p for p in ScriptedVLM.asked)


def test_fp8_storage_and_bucket_snapping_check(models: dict[str, Path], tmp_path: Path) -> None:
    from storyboard.backends import ImageRequest
    from storyboard.backends.diffusers_image import DiffusersImage

    request = ImageRequest(number=0, beat_type="hook", prompt="a courtroom", width=512, height=768, seed=3, quality="draft", setting="court")
    backend = DiffusersImage(image_settings(models, fp8=True, edit="none"))
    with backend:
        import torch

        block = backend.pipe.transformer.transformer_blocks[0]
        assert block.attn.to_q.weight.dtype == block.ff.net[0].proj.weight.dtype == torch.float8_e4m3fn  # stored in fp8, computed in float32
        backend.draw(request, tmp_path / "fp8.png")
        assert Image.open(tmp_path / "fp8.png").size == (512, 768)
    # img2img on the same weights keeps them as loaded (diffusers' from_pipe would recast them to float32).
    with DiffusersImage(image_settings(models, fp8=True, edit="img2img", dtype="bfloat16")) as img2img:
        assert img2img.edit_pipe.transformer is img2img.pipe.transformer and type(img2img.edit_pipe).__name__ == "FluxImg2ImgPipeline"
        block = img2img.pipe.transformer.transformer_blocks[0]
        assert block.attn.to_q.weight.dtype == torch.float8_e4m3fn and img2img.pipe.vae.dtype == torch.bfloat16
    with backend:
        # A pipeline that returns another size than asked is caught, not silently resized.
        real = type(backend.pipe).__call__

        @functools.wraps(real)
        def snapping(self, **kwargs):  # noqa: ANN001, ANN003, ANN202
            return real(self, **{**kwargs, "width": 1024, "height": 1024})

        type(backend.pipe).__call__ = snapping
        try:
            with pytest.raises(StageError, match="returned 1024x1024 for a 512x768 request"):
                backend.draw(request, tmp_path / "snap.png")
        finally:
            type(backend.pipe).__call__ = real


def test_transformers_tts_voices_every_line_with_one_load(tmp_path: Path) -> None:
    from storyboard.media import probe

    model = tiny_models.vits(tmp_path / "vits")
    config = resolve_config("offline", {"tts": {"backend": "transformers", "model": str(model), "device": "cpu"}})
    root = create_run(IDEA, "explainer5", config, tmp_path / "runs")
    summary = run_stages(root, config, stages=("visual", "video"))
    assert summary.status == "ok", summary
    assert summary.calls["tts.load"] == 1 and summary.calls["tts.speak"] == 6
    artifacts = json.loads((root / "run.json").read_text())["artifacts"]
    for rel in (r for r in artifacts if r.startswith("audio/")):
        info = probe(root / rel)
        assert info.sample_rate == 48000 and info.channels == 2 and (info.audio_duration or 0) > 0.2
        assert artifacts[rel]["inputs"]["backend"]["model"] == str(model)


def test_transformers_planner_plan_is_timed_in_run_json(models: dict[str, Path], tmp_path: Path) -> None:
    """A planner forced to spell a valid plan (the e2e benchmark's forcing): the plan lands, and run.json's plan
    stage has the attempt count, load time and the tokens the model generated."""
    from transformers import AutoTokenizer

    from bench.e2e_gpu import Forced
    from storyboard.backends.template_planner import TemplatePlanner

    plan = TemplatePlanner({}).plan(IDEA, load_format("explainer5"), 0)
    answer = json.dumps(plan)[1:]  # the planner pre-fills "{"
    config = resolve_config("offline", {"planner": {"backend": "transformers", "model": str(models["llm"]), "device": "cpu", "temperature": 0}})
    with Forced({"Qwen2ForCausalLM": answer}) as forced:
        forced.tokenizers["Qwen2ForCausalLM"] = tok = AutoTokenizer.from_pretrained(models["llm"])
        root = create_run(IDEA, "explainer5", config, tmp_path)
    assert json.loads((root / "plan.json").read_text())["beats"][0]["line"] == plan["beats"][0]["line"]
    figures = json.loads((root / "run.json").read_text())["stages"]["plan"]
    assert figures["attempts"] == 1 and figures["load_s"] >= 0 and figures["seconds"] >= figures["generate_s"] > 0
    assert figures["new_tokens"] == len(tok(answer, add_special_tokens=False)["input_ids"]) + 1  # and end of text
    assert figures["prompt_tokens"] > 0 and figures["tokens_per_s"] > 0


def test_planner_static_cache_decodes_what_the_dynamic_cache_does(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's default static KV cache (sized once for prompt + answer) yields the same greedy tokens as the
    growing dynamic cache, and generate is told which; a cache name that does not exist is refused."""
    import transformers

    from storyboard.backends.transformers_planner import TransformersPlanner

    seen: list[tuple[str | None, list[int]]] = []
    real = transformers.GenerationMixin.generate

    def spy(model: object, *args: object, **kwargs: object) -> object:
        out = real(model, *args, **kwargs)
        seen.append((kwargs.get("cache_implementation"), out[0].tolist()))  # type: ignore[index]
        return out

    monkeypatch.setattr(transformers.GenerationMixin, "generate", spy)
    for cache in ("static", "dynamic"):
        planner = TransformersPlanner({"model": str(models["llm"]), "device": "cpu", "temperature": 0, "max_new_tokens": 40, "cache": cache})
        with planner, pytest.raises(InputError, match="max_new_tokens=40"):  # random weights never close the JSON
            planner.plan(IDEA, load_format("explainer5"), 0)
    assert [s[0] for s in seen] == ["static", None]
    assert len(seen[0][1]) > 40 and seen[0][1] == seen[1][1]
    with pytest.raises(InputError, match="planner.cache: 'paged'; choose static or dynamic"):
        TransformersPlanner({"model": str(models["llm"]), "cache": "paged"})


def test_two_beats_in_flight_share_the_pipeline_one_call_at_a_time(models: dict[str, Path], tmp_path: Path) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from storyboard.backends import ImageRequest
    from storyboard.backends.diffusers_image import DiffusersImage
    from storyboard.produce import in_flight

    backend = DiffusersImage(image_settings(models, edit="none"))
    assert in_flight(backend) == 2  # the stage (and each GPU under --gpus) keeps two beats going
    inside, most, saves = 0, 0, []
    lock = threading.Lock()
    with backend:
        real = type(backend.pipe).__call__

        @functools.wraps(real)
        def counted(self, **kwargs):  # noqa: ANN001, ANN003, ANN202
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.05)
            try:
                return real(self, **kwargs)
            finally:
                with lock:
                    inside -= 1

        type(backend.pipe).__call__ = counted
        try:
            requests = [ImageRequest(number=n, beat_type="beat", prompt=f"shot {n}", width=64, height=96, seed=n, quality="draft", setting="court")
                        for n in range(4)]
            with ThreadPoolExecutor(in_flight(backend)) as threads:
                list(threads.map(lambda r: backend.draw(r, tmp_path / f"{r.number}.png"), requests))
                saves = sorted(p.name for p in tmp_path.glob("*.png"))
        finally:
            type(backend.pipe).__call__ = real
    assert most == 1 and saves == ["0.png", "1.png", "2.png", "3.png"]


def test_a_dropped_pipeline_is_freed_without_a_full_collection_unless_a_cycle_holds_it(models: dict[str, Path], tmp_path: Path) -> None:
    from storyboard.backends import ImageRequest
    from storyboard.backends.diffusers_image import DiffusersImage

    full: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    backend = DiffusersImage(image_settings(models, edit="img2img"))
    gc.disable()  # only the backend's own collections are counted
    gc.callbacks.append(count)
    try:
        with backend:
            transformer = weakref.ref(backend.pipe.transformer)
            # a call leaves each denoiser module tied to a hook registry pointing back at it (its cache context)
            backend.draw(ImageRequest(number=0, beat_type="hook", prompt="a courtroom", width=256, height=256, seed=1, quality="draft", setting="court"),
                         tmp_path / "hook.png")
            assert hasattr(backend.pipe.transformer, "_diffusers_hook")
        assert transformer() is None and full == []  # gone with its last reference: no third of a second in gc.collect
        with backend:
            transformer = weakref.ref(backend.pipe.transformer)
            backend.pipe.transformer.loop = [backend.pipe.transformer]  # a reference cycle keeps it past the drop
        assert transformer() is None and len(full) == 1
    finally:
        gc.callbacks.remove(count)
        gc.enable()


def test_a_dropped_model_of_another_library_is_always_collected() -> None:
    from storyboard.backends.hf_common import free_memory, watch

    class Model:  # no torch module to watch (a CTranslate2 recogniser, say), held by a cycle
        def __init__(self) -> None:
            self.me = self

    model = Model()
    gone = weakref.ref(model)
    dropped = watch(model)
    del model
    free_memory(dropped)
    assert dropped == [] and gone() is None
