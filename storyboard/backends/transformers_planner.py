"""Planner on a local instruct model through transformers (optionally 4-bit with bitsandbytes)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import InputError, StageError
from ..formats import Format
from . import BackendBase, register
from .hf_common import TransformersBackend, synchronize
from .llm_common import parse_json_object, planner_messages


@register("planner", "transformers")
class TransformersPlanner(TransformersBackend, BackendBase):
    """Settings: model (hub id in the local cache, or a path), device, dtype, load_in_4bit,
    max_new_tokens (6144), temperature (0.7), timeout_s (600: generation stops and the plan fails),
    cache ("static": the KV cache is allocated once for prompt + answer; "dynamic" grows it token by token, and a
    first generate in a process then runs at half speed: new shapes every step), compile (false: true compiles the
    decoding step once per process, about a minute, then decodes ~3x faster: worth it for a batch of ideas)."""

    name = "transformers"
    role = "planner"
    default_model = "Qwen/Qwen2.5-14B-Instruct"
    model_class, processor_class = "AutoModelForCausalLM", "AutoTokenizer"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.max_new_tokens = int(settings.get("max_new_tokens", 6144))
        self.temperature = float(settings.get("temperature", 0.7))
        self.timeout_s = float(settings.get("timeout_s", 600))
        self.cache = str(settings.get("cache", "static"))
        if self.cache not in ("static", "dynamic"):
            raise InputError(f"planner.cache: {self.cache!r}; choose static or dynamic")
        self.compile = bool(settings.get("compile", False))

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_ref, "4bit": self.load_in_4bit, "temperature": self.temperature}

    def plan(self, idea: str, fmt: Format, seed: int, feedback: str | None = None) -> dict[str, Any]:
        import torch

        system, user = planner_messages(idea, fmt, seed, feedback)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The answer is pre-filled with "{": the model can only continue a JSON object.
        encoded = self.processor(prompt + "{", return_tensors="pt", add_special_tokens=False).to(self.model.device)
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        if self.cache == "static":
            sampling.update(cache_implementation="static", disable_compile=not self.compile)
        synchronize()
        started = time.monotonic()
        with torch.inference_mode():
            output = self.model.generate(**encoded, max_new_tokens=self.max_new_tokens, max_time=self.timeout_s,
                                         pad_token_id=self.processor.pad_token_id or self.processor.eos_token_id, **sampling)
        new = output[0, encoded["input_ids"].shape[1]:]
        synchronize()
        seconds = time.monotonic() - started
        self.figures.update(prompt_tokens=int(encoded["input_ids"].shape[1]), new_tokens=len(new), generate_s=round(seconds, 3),
                            tokens_per_s=round(len(new) / seconds, 1) if seconds > 0 else None)
        finished = self.processor.eos_token_id is not None and bool((new == self.processor.eos_token_id).any())
        text = "{" + self.processor.decode(new, skip_special_tokens=True)
        if not finished and len(new) >= self.max_new_tokens:
            raise InputError(f"{self.name} planner ({self.model_ref}): the answer was cut at max_new_tokens={self.max_new_tokens} before the JSON closed")
        try:
            return parse_json_object(text, f"{self.name} planner ({self.model_ref})")
        except Exception:
            if not finished:
                raise StageError(f"planner {self.model_ref}: no complete answer within timeout_s={self.timeout_s:.0f} s") from None
            raise
