"""Offline backends produce real media: cards at size, distinct voices, clips of the right length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storyboard.backends import ClipRequest, ImageRequest, VoiceSpec, available, create
from storyboard.backends.kenburns import KenBurns
from storyboard.backends.piper_tts import PiperTTS
from storyboard.errors import InputError, PreflightError
from storyboard.media import decode_audio, probe, speech_span, wav_duration


def test_registry_lists_offline_backends() -> None:
    assert "template" in available("planner") and "card" in available("image")
    with pytest.raises(InputError, match="available: .*card"):
        create("image", {"backend": "nope"})


def test_card_draws_at_requested_size_and_seed_changes_it(tmp_path: Path) -> None:
    from PIL import Image

    card = create("image", {"backend": "card"})
    outs = []
    for seed in (1, 2):
        request = ImageRequest(number=3, beat_type="refusal", prompt="Mr. Grant, arms crossed", width=320, height=480,
                               seed=seed, quality="draft", setting="an office", characters=["Mr. Grant", "Mia"],
                               caption="Mr. Grant, arms crossed — 猫")
        out = tmp_path / f"c{seed}.png"
        card.draw(request, out)
        with Image.open(out) as img:
            assert img.size == (320, 480)
            outs.append(np.asarray(img))
    assert not np.array_equal(outs[0], outs[1])


def _pitch(samples: np.ndarray, rate: int) -> float:
    """The voice's F0 (55-300 Hz) from the cepstrum averaged over its loud frames.

    One estimate per take, not a median of per-frame guesses: a frame-by-frame YIN let a few frames of a
    low voice (the pitched-down take has few clearly voiced ones) swing the median by a third between takes.
    """
    frame = int(0.064 * rate)
    frames = np.stack([samples[s:s + frame] for s in range(0, len(samples) - frame, frame // 4)]) * np.hanning(frame)
    loudness = np.sqrt(np.mean(frames ** 2, axis=1))
    frames = frames[loudness > 0.25 * loudness.max()]
    cepstrum = np.fft.irfft(np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-6), axis=1).mean(axis=0)
    lo, hi = rate // 300, rate // 55
    return rate / (lo + int(np.argmax(cepstrum[lo:hi])))


def test_piper_voices_differ_by_cast_member(tmp_path: Path) -> None:
    tts = PiperTTS({})
    pitches = {}
    with tts:
        for name, spec in {"low": VoiceSpec("joe", -4.0, 0.95), "high": VoiceSpec("joe", 4.0, 1.05)}.items():
            out = tmp_path / f"{name}.wav"
            tts.speak("Rules are rules, and the answer is no.", spec, "en", 0, out)
            info = probe(out)
            assert (info.sample_rate, info.channels) == (48000, 2)
            assert 1.0 < wav_duration(out) < 6.0
            pitches[name] = _pitch(decode_audio(out, 16000), 16000)
    assert tts.loads == 1  # one voice model load for both lines
    # 8 semitones apart: 2 ** (8 / 12) = 1.587. Over 30 pairs of takes this gave 1.41-1.64 (the raised take's
    # intonation varies most); the same voice unshifted gives 1.0.
    assert 1.3 < pitches["high"] / pitches["low"] < 1.9


def test_missing_piper_voice_names_the_fix() -> None:
    with pytest.raises(PreflightError, match="piper voice 'nobody' not found"):
        PiperTTS({}).model_path("nobody")


@pytest.mark.parametrize("with_audio", [True, False])
def test_kenburns_clip_lasts_its_duration(tmp_path: Path, with_audio: bool) -> None:
    from PIL import Image

    image = tmp_path / "b.png"
    Image.effect_noise((128, 192), 60).convert("RGB").save(image)
    audio = None
    if with_audio:
        tts = PiperTTS({})
        audio = tmp_path / "a.wav"
        with tts:
            tts.speak("Hello there.", VoiceSpec("joe"), "en", 0, audio)
    request = ClipRequest(number=1, renderer="a2v", image=image, audio=audio, duration=2.5, width=128, height=192, fps=24, seed=5, prompt="")
    out = tmp_path / "c.mp4"
    KenBurns({"workers": 1}).animate(request, out)
    info = probe(out)
    assert (info.width, info.height, info.frames) == (128, 192, 60)
    assert abs(info.audio_duration - 2.5) < 0.05
    span = speech_span(decode_audio(out), 16000)
    assert (span is not None) == with_audio


@pytest.mark.parametrize(("capability", "name"), [("image", "diffusers"), ("video", "ltx-video"), ("video", "kenburns")])
@pytest.mark.parametrize("bad", ["two", -1, 1.5, True])
def test_a_bad_workers_setting_names_the_field(capability: str, name: str, bad: object) -> None:
    with pytest.raises(PreflightError, match=rf"{capability}\.workers: .*whole number"):
        create(capability, {"backend": name, "workers": bad})
    assert create(capability, {"backend": name, "workers": 3}).workers == 3


def test_a_section_module_registers_your_own_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`module:` in a section is imported before the backend is looked up (so worker processes find it too)."""
    from storyboard import backends

    (tmp_path / "my_planners.py").write_text(
        "from storyboard.backends import register\n"
        "from storyboard.backends.template_planner import TemplatePlanner\n"
        "@register('planner', 'mine')\n"
        "class Mine(TemplatePlanner):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert type(backends.create("planner", {"backend": "mine", "module": "my_planners"})).__name__ == "Mine"
    with pytest.raises(InputError, match="planner.module: cannot import 'no_such_planners'"):
        backends.create("planner", {"backend": "mine", "module": "no_such_planners"})
