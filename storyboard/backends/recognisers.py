"""Speech recognisers for TTS QA: openai-whisper from a local checkpoint, or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PreflightError
from . import BackendBase, register
from .hf_common import LOAD_LOCK, LoadedModel, free_memory, watch


@register("qa", "none")
class NoQA(BackendBase):
    """Takes are kept as the TTS made them."""

    name = "none"
    enabled = False


@register("qa", "whisper")
class WhisperQA(BackendBase, LoadedModel):
    """Settings: model (a checkpoint path, or a name such as `small` already in download_root), download_root
    (default ~/.cache/whisper), device, max_takes (3), min_similarity (0.5), max_gap_s (0.9)."""

    name = "whisper"
    enabled = True

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self._init_figures()
        self.model_ref = str(settings.get("model", "small"))
        self.root = Path(str(settings.get("download_root", Path.home() / ".cache" / "whisper"))).expanduser()
        self.max_takes = int(settings.get("max_takes", 3))
        self.min_similarity = float(settings.get("min_similarity", 0.5))
        self.max_gap_s = float(settings.get("max_gap_s", 0.9))
        self.model: Any = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_ref, "max_takes": self.max_takes,
                "min_similarity": self.min_similarity, "max_gap_s": self.max_gap_s}

    def checkpoint(self) -> Path:
        """The checkpoint file: a path, or a named model already downloaded (never fetched here)."""
        path = Path(self.model_ref).expanduser()
        if path.is_file():
            return path
        import whisper

        url = whisper._MODELS.get(self.model_ref)  # noqa: SLF001 - the package's own name → file table
        if url is not None and (self.root / Path(url).name).is_file():
            return self.root / Path(url).name
        fetch = f"python -c \"import whisper; whisper.load_model('{self.model_ref}')\"" if url else "give a checkpoint path"
        raise PreflightError(f"qa: whisper model {self.model_ref} is not on this machine ({self.root}); fetch it once with: {fetch}")

    def missing_models(self) -> list[str]:
        try:
            self.checkpoint()
        except PreflightError as error:
            return [str(error)]
        return []

    def __enter__(self) -> WhisperQA:
        def load() -> None:
            with LOAD_LOCK:
                import torch
                import whisper

                device = str(self.settings.get("device", "cuda" if torch.cuda.is_available() else "cpu"))
                checkpoint = self.checkpoint()
                model = whisper.load_model(str(checkpoint), device=device)
                broken = [name for name, weight in model.state_dict().items()
                          if weight.is_floating_point() and not bool(torch.isfinite(weight).all())]
                if broken:  # NaN logits never reach the end token: every take would decode to its length limit
                    raise PreflightError(f"qa: whisper checkpoint {checkpoint} has NaN or infinite weights in "
                                         f"{', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}; fetch it again")
                self.model = model

        self.timed_load(load)
        return self

    def __exit__(self, *exc: object) -> None:
        dropped = watch(self.model)
        self.model = None
        free_memory(dropped)

    def warm(self) -> None:
        """Two seconds of silence recognised: loads the GPU kernels before the first take is checked."""
        import numpy as np

        self.model.transcribe(np.zeros(32000, dtype=np.float32), language="en", task="transcribe", temperature=0.0,
                              condition_on_previous_text=False, fp16=self.model.device.type == "cuda", sample_len=8, verbose=None)

    def transcribe(self, wav: Path, language: str) -> str:
        """Text heard in `wav`, recognised in the line's own language (a forced wrong one translates)."""
        from .. import media

        audio = media.decode_audio(wav, 16000).astype("float32")
        result = self.model.transcribe(audio, language=language.split("-")[0], task="transcribe", temperature=0.0,
                                       condition_on_previous_text=False, fp16=self.model.device.type == "cuda",
                                       sample_len=160, verbose=None)
        return str(result.get("text", ""))
