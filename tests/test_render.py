"""Render on real tiny clips: normalisation, never-cut audio, subtitles, loudness, music."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from storyboard.errors import StageError
from storyboard.ffmpeg import run_ffmpeg
from storyboard.media import decode_audio
from storyboard.render import render

from helpers import mixed_run

FPS = 24


def integrated_lufs(path: Path) -> float:
    err = run_ffmpeg(["-nostats", "-i", str(path), "-af", "ebur128", "-f", "null", "-"], loglevel="info")
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", err)[-1])


def test_speech_longer_than_its_clip_is_caught(tmp_path: Path, config: dict) -> None:
    ctx = mixed_run(tmp_path / "run", config, hook_audio_s=1.0)  # the clip's audio stops before the speech
    with pytest.raises(StageError, match=r"beat 0's clip carries 1\.\d+ s of audio but its speech lasts 1\.5\d* s.*--regen-beats 0"):
        render(ctx)
    assert not (tmp_path / "run" / "final.mp4").exists()


def test_music_is_ducked_under_speech_and_faded(tmp_path: Path, config: dict) -> None:
    music = tmp_path / "bed.wav"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000:d=3", "-ac", "2", str(music)])  # shorter: it loops
    root = tmp_path / "run"
    render(mixed_run(root, config, music=music))
    samples = decode_audio(root / "final.mp4", 16000)

    def tone(at: float, freq: int) -> float:
        window = samples[int(at * 16000) : int((at + 0.5) * 16000)]
        spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
        return float(spectrum[int(freq * len(window) / 16000)])

    under_speech, in_silence = tone(0.6, 440), tone(3.9, 440)  # hook speaks until 1.5 s; beat 2 (3.5-4.7 s) is silent
    assert in_silence > 2 * under_speech > 0
    assert tone(5.5, 440) > 0  # looped past its 3 s
    total = len(samples) / 16000
    assert tone(total - 0.4, 440) < in_silence / 3  # faded out


