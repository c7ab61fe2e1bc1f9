"""Judge on a local vision-language model through transformers (Qwen-VL, Gemma-3, LLaVA class; 4-bit optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import BackendBase, ImageRequest, Verdict, register
from .hf_common import LoadedModel, free_memory, load_pretrained, missing
from .judging import parse_verdict, question


@register("judge", "vlm")
class VLMJudge(BackendBase, LoadedModel):
    """Settings: model (hub id in the local cache, or a path), device, dtype, load_in_4bit,
    max_new_tokens (64), max_side (image downscaled to this longest side before judging, 896)."""

    name = "vlm"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self._init_figures()
        self.model_ref = str(settings.get("model", "Qwen/Qwen2.5-VL-7B-Instruct"))
        self.load_in_4bit = bool(settings.get("load_in_4bit", False))
        self.max_new_tokens = int(settings.get("max_new_tokens", 64))
        self.max_side = int(settings.get("max_side", 896))
        self.model: Any = None
        self.processor: Any = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_ref, "4bit": self.load_in_4bit}

    def missing_models(self) -> list[str]:
        return missing({"judge": self.model_ref})

    def __enter__(self) -> VLMJudge:
        def load() -> None:
            self.processor, self.model = load_pretrained(self.settings, self.model_ref, "judge", "AutoModelForImageTextToText", "AutoProcessor",
                                                         self.load_in_4bit)

        self.timed_load(load)
        return self

    def __exit__(self, *exc: object) -> None:
        self.model = self.processor = None
        free_memory()

    def answer(self, image: Path, prompt: str) -> str:
        """The model's free-text answer about one image."""
        import torch
        from PIL import Image

        with Image.open(image) as img:
            picture = img.convert("RGB")
        picture.thumbnail((self.max_side, self.max_side))
        messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": prompt}]}]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def judge(self, image: Path, request: ImageRequest) -> Verdict:
        return parse_verdict(self.answer(image, question(request)))
