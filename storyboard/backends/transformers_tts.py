"""TTS on transformers text-to-waveform models (VITS / MMS-TTS class): one checkpoint per language."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

from ..rundir import temp_path_for
from . import BackendBase, VoiceSpec, register
from .hf_common import LOAD_LOCK, LoadedModel, device_of, free_memory, missing, resolve_model, to_device, watch
from .piper_tts import SAMPLE_RATE, finish_take


@register("tts", "transformers")
class TransformersTTS(BackendBase, LoadedModel):
    """Settings: model (default checkpoint: hub id in the local cache or a path), models ({language: checkpoint},
    e.g. {en: facebook/mms-tts-eng, ja: ...}), device. A cast member's voice speed sets the model's speaking
    rate; pitch is shifted afterwards. The model samples: the take's seed seeds it."""

    name = "transformers-tts"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self._init_figures()
        self.default = str(settings.get("model", "facebook/mms-tts-eng"))
        self.per_language: dict[str, str] = {str(k): str(v) for k, v in dict(settings.get("models", {})).items()}
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.default, "models": self.per_language, "rate": SAMPLE_RATE}

    def missing_models(self) -> list[str]:
        return missing({"tts": self.default, **{f"tts ({lang})": ref for lang, ref in self.per_language.items()}})

    def model_for(self, language: str) -> str:
        return self.per_language.get(language) or self.per_language.get(language.split("-")[0]) or self.default

    def _model(self, ref: str) -> tuple[Any, Any]:
        """(tokenizer, model) for a checkpoint, loaded once per stage."""
        if ref not in self._loaded:
            def load() -> None:
                with LOAD_LOCK:
                    from transformers import AutoModelForTextToWaveform, AutoTokenizer

                    path = resolve_model(ref, "tts")
                    tokenizer = AutoTokenizer.from_pretrained(path)
                    model = AutoModelForTextToWaveform.from_pretrained(path)
                self._loaded[ref] = (tokenizer, to_device(model, device_of(self.settings)).eval())

            self.timed_load(load)
        return self._loaded[ref]

    def __enter__(self) -> TransformersTTS:
        self._model(self.default)
        return self

    def __exit__(self, *exc: object) -> None:
        dropped = watch(self._loaded)
        self._loaded.clear()
        free_memory(dropped)

    def warm(self) -> None:
        """One short line through each loaded voice: loads the GPU kernels before the first take (speak() seeds
        every take itself, so this changes no take)."""
        import torch

        for tokenizer, model in list(self._loaded.values()):
            with torch.inference_mode():
                model(**tokenizer("Warm up.", return_tensors="pt").to(model.device))

    def speak(self, text: str, voice: VoiceSpec, language: str, seed: int, out_wav: Path) -> None:
        import numpy as np
        import torch

        tokenizer, model = self._model(self.model_for(language))
        inputs = tokenizer(text, return_tensors="pt").to(model.device)
        model.config.speaking_rate = float(voice.speed)
        torch.manual_seed(seed)
        with torch.inference_mode():
            waveform = model(**inputs).waveform[0].float().cpu().numpy()
        raw = temp_path_for(out_wav.with_suffix(".raw.wav"))
        try:
            with wave.open(str(raw), "wb") as handle:
                handle.setnchannels(1)
                handle.setsampwidth(2)
                handle.setframerate(int(model.config.sampling_rate))
                handle.writeframes((np.clip(waveform, -1, 1) * 32767).astype("<i2").tobytes())
            finish_take(raw, voice.pitch, out_wav, f"voice {voice.voice} ({self.model_for(language)})")
        finally:
            raw.unlink(missing_ok=True)
