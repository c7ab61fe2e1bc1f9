"""Image backend on diffusers: any text-to-image pipeline, beats drawn as edits of a base scene.

The base scene (setting + cast) is drawn once by the text-to-image pipeline; each beat is an
edit of it (an edit pipeline such as Flux Kontext or Qwen-Image-Edit, or img2img on the same
weights as the weakest fallback) so characters and setting stay the same from beat to beat.
"""

from __future__ import annotations

import functools
import inspect
import threading
from pathlib import Path
from typing import Any

from ..errors import PreflightError, StageError
from . import BackendBase, ImageRequest, register
from .hf_common import (
    LOAD_LOCK,
    LoadedModel,
    device_of,
    dtype_of,
    free_memory,
    load_pipeline,
    missing,
    model_index,
    resolve_model,
    same_weights,
    watch,
)

# Per model family (the pipeline class in model_index.json): the model's own recommended settings.
# draft = about 1024 on the long side and few steps; final = full size and the recommended steps.
FAMILIES: dict[str, dict[str, Any]] = {
    "flux": {"draft": {"steps": 12, "guidance_scale": 3.5, "long_side": 1024}, "final": {"steps": 28, "guidance_scale": 3.5, "long_side": 1344},
             "multiple": 16, "extra": {"max_sequence_length": 512}},
    "flux-schnell": {"draft": {"steps": 2, "guidance_scale": 0.0, "long_side": 1024}, "final": {"steps": 4, "guidance_scale": 0.0, "long_side": 1344},
                     "multiple": 16, "extra": {"max_sequence_length": 256}},
    "flux-kontext": {"draft": {"steps": 14, "guidance_scale": 2.5, "long_side": 1024}, "final": {"steps": 28, "guidance_scale": 2.5, "long_side": 1344},
                     "multiple": 16, "extra": {"max_sequence_length": 512}},
    "qwen-image": {"draft": {"steps": 16, "true_cfg_scale": 4.0, "long_side": 1024}, "final": {"steps": 50, "true_cfg_scale": 4.0, "long_side": 1472},
                   "multiple": 16, "extra": {"negative_prompt": " "}},
    "sdxl": {"draft": {"steps": 15, "guidance_scale": 5.0, "long_side": 1024}, "final": {"steps": 30, "guidance_scale": 5.0, "long_side": 1344},
             "multiple": 8, "extra": {}},
    "sd3": {"draft": {"steps": 14, "guidance_scale": 4.5, "long_side": 1024}, "final": {"steps": 28, "guidance_scale": 4.5, "long_side": 1344},
            "multiple": 16, "extra": {}},
    "hidream": {"draft": {"steps": 16, "guidance_scale": 5.0, "long_side": 1024}, "final": {"steps": 50, "guidance_scale": 5.0, "long_side": 1344},
                "multiple": 16, "extra": {}},
    "default": {"draft": {"steps": 16, "long_side": 1024}, "final": {"steps": 30, "long_side": 1344}, "multiple": 16, "extra": {}},
}


def family_of(model_dir: Path | None, model_ref: str) -> str:
    """Family key from the pipeline class in model_index.json (and the model name for schnell)."""
    name = model_index(model_dir).get("_class_name", "")
    lowered = f"{name} {model_ref}".lower()
    if "kontext" in lowered:
        return "flux-kontext"
    if "flux" in lowered:
        return "flux-schnell" if "schnell" in lowered else "flux"
    for key, needle in (("qwen-image", "qwenimage"), ("sdxl", "stablediffusionxl"), ("sd3", "stablediffusion3"), ("hidream", "hidream")):
        if needle in lowered.replace("-", "").replace("_", ""):
            return key
    return "default"


def pipeline_size(width: int, height: int, long_side: int | None, multiple: int) -> tuple[int, int]:
    """The size asked of the pipeline: the run's aspect at `long_side`, in multiples the model accepts."""
    scale = 1.0 if not long_side else long_side / max(width, height)
    return max(multiple, round(width * scale / multiple) * multiple), max(multiple, round(height * scale / multiple) * multiple)


def _accepts(pipe: Any) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)


@register("image", "diffusers")
class DiffusersImage(BackendBase, LoadedModel):
    """Settings: model (t2i pipeline id or path), edit_model (edit pipeline, optional), edit (`auto` = edit_model or
    img2img, `img2img`, `none`), edit_strength (img2img, 0.6), device, dtype, presets {draft|final: steps,
    guidance_scale, true_cfg_scale, long_side}, fp8 (layerwise fp8 storage of the denoiser), text_encoder_4bit,
    offload (none|model|group|sequential), vae_tiling, share_components (edit pipeline reuses text encoders/VAE),
    workers (beats in flight, 2: one in the pipeline while the one before it is saved)."""

    name = "diffusers"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self._init_figures()
        self.model_ref = str(settings.get("model", "black-forest-labs/FLUX.1-dev"))
        self.edit_ref = settings.get("edit_model")
        self.edit_mode = str(settings.get("edit", "auto"))
        if self.edit_mode not in {"auto", "img2img", "none"}:
            raise PreflightError(f"image.edit: {self.edit_mode!r}; choose auto, img2img or none")
        self.uses_base = self.edit_mode != "none"
        self.workers = self.workers_setting("image", 2)  # beats in flight: one on the GPU while the one before it is saved
        self.gpu = threading.Lock()  # one pipeline call at a time
        self.pipe: Any = None
        self.edit_pipe: Any = None

    # -- what goes into content keys -------------------------------------------------------------
    def _local(self, ref: str) -> Path | None:
        try:
            return resolve_model(ref, "image")
        except PreflightError:
            return None

    @functools.cached_property
    def _family(self) -> str:
        return str(self.settings.get("family") or family_of(self._local(self.model_ref), self.model_ref))

    def family(self) -> str:
        """The model family (read from model_index.json once: identity() runs for every beat's key)."""
        return self._family

    def preset(self, quality: str, family: str | None = None) -> dict[str, Any]:
        """The family's preset for `quality`, with the profile's overrides on top."""
        table = FAMILIES[family or self.family()]
        return {**table[quality], **dict(self.settings.get("presets", {}).get(quality, {}))}

    def identity(self) -> dict[str, Any]:
        family = self.family()
        return {
            "backend": self.name, "model": self.model_ref, "edit_model": self.edit_ref, "edit": self.edit_mode,
            "presets": {q: self.preset(q, family) for q in ("draft", "final")}, "fp8": bool(self.settings.get("fp8", False)),
            "edit_strength": float(self.settings.get("edit_strength", 0.6)),
        }

    def missing_models(self) -> list[str]:
        return missing({"image": self.model_ref, "image edit": self.edit_ref})

    # -- load once per stage -------------------------------------------------------------------------
    def __enter__(self) -> DiffusersImage:
        def load() -> None:
            device = device_of(self.settings)
            dtype = dtype_of(self.settings, device)
            self.device = device
            self.pipe = load_pipeline(self.settings, self.model_ref, "image", dtype, device, siblings=True)
            if self.edit_mode == "none":
                return
            if self.edit_ref and self.edit_mode == "auto":
                shared = self.pipe.components if self.settings.get("share_components", True) else None
                self.edit_pipe = load_pipeline(self.settings, str(self.edit_ref), "image edit", dtype, device, shared)
            else:
                with LOAD_LOCK:
                    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, _get_task_class

                    # same weights, no extra memory, dtype and fp8 storage kept
                    self.edit_pipe = same_weights(_get_task_class(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, type(self.pipe).__name__), self.pipe)

        self.timed_load(load)
        return self

    def __exit__(self, *exc: object) -> None:
        dropped = watch(self.pipe, self.edit_pipe)
        self.pipe = self.edit_pipe = None
        free_memory(dropped)

    def warm(self) -> None:
        """One small call of each pipeline (a step at ~256 px): loads the GPU kernels before the first beat."""
        import torch
        from PIL import Image

        family = self.family()
        multiple = FAMILIES[family]["multiple"]
        side = multiple * max(1, 256 // multiple)
        for pipe in (self.pipe, self.edit_pipe):
            if pipe is None:
                continue
            accepted = _accepts(pipe)
            kwargs: dict[str, Any] = {"prompt": "warm up", "width": side, "height": side, "num_inference_steps": 1,
                                      "generator": torch.Generator("cpu").manual_seed(0)}
            if pipe is self.edit_pipe and "image" in accepted:
                kwargs["image"] = Image.new("RGB", (side, side), "gray")
                if "strength" in accepted:  # img2img runs steps x strength steps: at least one
                    kwargs.update(strength=1.0)
            pipe(**{k: v for k, v in kwargs.items() if k in accepted})

    # -- draw -------------------------------------------------------------------------------------------
    def _call(self, pipe: Any, family: str, request: ImageRequest, prompt: str, image: Any = None) -> Any:
        """One pipeline call at the preset's size and steps; the size that came back is checked."""
        import torch

        preset = self.preset(request.quality, family)
        multiple = FAMILIES[family]["multiple"]
        width, height = pipeline_size(request.width, request.height, preset.get("long_side"), multiple)
        accepted = _accepts(pipe)
        kwargs: dict[str, Any] = {"prompt": prompt, "width": width, "height": height, "num_inference_steps": int(preset["steps"]),
                                  "generator": torch.Generator("cpu").manual_seed(request.seed)}
        for name in ("guidance_scale", "true_cfg_scale"):
            if preset.get(name) is not None:
                kwargs[name] = float(preset[name])
        kwargs.update(FAMILIES[family]["extra"])
        if "prompt_2" in accepted:  # two encoders (CLIP reads 77 tokens): the short shot for CLIP, everything for T5
            kwargs["prompt"], kwargs["prompt_2"] = ". ".join(p for p in (request.caption, ", ".join(request.characters)) if p) or prompt, prompt
        if image is not None:
            kwargs["image"] = [image] if "Plus" in type(pipe).__name__ else image
            if "strength" in accepted:
                kwargs["strength"] = float(self.settings.get("edit_strength", 0.6))
            if "_auto_resize" in accepted:
                kwargs["_auto_resize"] = False  # Kontext would snap the reference to its own buckets
        if "max_area" in accepted:
            kwargs["max_area"] = width * height  # Kontext rescales every request to max_area otherwise
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        with self.gpu:
            picture = pipe(**kwargs).images[0]
        if picture.size != (width, height):
            raise StageError(f"{type(pipe).__name__} returned {picture.size[0]}x{picture.size[1]} for a {width}x{height} request "
                             f"(it snaps sizes to its buckets); set image.presets.{request.quality}.long_side to a size it keeps")
        return picture

    def draw(self, request: ImageRequest, out: Path) -> None:
        from PIL import Image

        family = self.family()
        if request.base is not None and self.edit_pipe is not None:
            with Image.open(request.base) as img:
                base = img.convert("RGB")
            pipe_family = family_of(self._local(str(self.edit_ref)), str(self.edit_ref)) if self.edit_ref and self.edit_mode == "auto" else family
            prompt = f"Same scene, same characters, same art style. {request.prompt}"
            picture = self._call(self.edit_pipe, pipe_family, request, prompt, image=base.resize(
                pipeline_size(request.width, request.height, self.preset(request.quality, pipe_family).get("long_side"), FAMILIES[pipe_family]["multiple"]),
                Image.Resampling.LANCZOS))
        else:
            picture = self._call(self.pipe, family, request, request.prompt)
        if picture.size != (request.width, request.height):
            picture = picture.resize((request.width, request.height), Image.Resampling.LANCZOS)
        picture.save(out, format="PNG", compress_level=1)  # fast deflate: the GPU waits on this
