"""Judge on a local vision-language model through transformers (Qwen-VL, Gemma-3, LLaVA class; 4-bit optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import BackendBase, ImageRequest, Verdict, register
from .hf_common import TransformersBackend
from .judging import parse_verdict, question


@register("judge", "vlm")
class VLMJudge(TransformersBackend, BackendBase):
    """Settings: model (hub id in the local cache, or a path), device, dtype, load_in_4bit,
    max_new_tokens (64), max_side (image downscaled to this longest side before judging, 896)."""

    name = "vlm"
    role = "judge"
    default_model = "Qwen/Qwen2.5-VL-7B-Instruct"
    model_class, processor_class = "AutoModelForImageTextToText", "AutoProcessor"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.max_new_tokens = int(settings.get("max_new_tokens", 64))
        self.max_side = int(settings.get("max_side", 896))

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_ref, "4bit": self.load_in_4bit}

    def answer(self, image: Path, prompt: str) -> str:
        """The model's free-text answer about one image."""
        from PIL import Image

        with Image.open(image) as img:
            picture = img.convert("RGB")
        picture.thumbnail((self.max_side, self.max_side))
        return self._ask(picture, prompt, self.max_new_tokens)

    def warm(self) -> None:
        """One short question about a blank picture: loads the GPU kernels before the first beat."""
        from PIL import Image

        self._ask(Image.new("RGB", (64, 64), "gray"), "Is this picture blank?", 1)

    def _ask(self, picture: Any, prompt: str, max_new_tokens: int) -> str:
        import torch

        messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": prompt}]}]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def judge(self, image: Path, request: ImageRequest) -> Verdict:
        return parse_verdict(self.answer(image, question(request)))
