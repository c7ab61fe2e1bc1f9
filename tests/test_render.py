"""Render on real tiny clips: normalisation, never-cut audio, subtitles, loudness, music."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from storyboard.context import RunContext
from storyboard.errors import StageError
from storyboard.ffmpeg import run_ffmpeg
from storyboard.media import decode_audio, probe
from storyboard.render import render
from storyboard.rundir import RunDir

from helpers import changed, edit_plan, make_clip, make_wav, media_hashes, silent_beat, synthetic_plan

FPS = 24


def integrated_lufs(path: Path) -> float:
    err = run_ffmpeg(["-nostats", "-i", str(path), "-af", "ebur128", "-f", "null", "-"], loglevel="info")
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", err)[-1])


def _mixed_run(root: Path, config: dict, *, hook_audio_s: float = 2.0, music: Path | None = None) -> RunContext:
    rd = RunDir(root)
    plan = synthetic_plan([silent_beat("i2v", 1.5), silent_beat("i2v", 1.2), {**silent_beat("sfx", 2.0), "type": "gavel"}])
    rd.plan.parent.mkdir(parents=True, exist_ok=True)
    rd.plan.write_text(json.dumps(plan))
    make_wav(rd.audio(0), 1.5)  # the narrator's speech
    make_clip(rd.clip(0, "hook"), fps="24", size="320x480", seconds=2.0, audio=(44100, 2, hook_audio_s, 1000))
    make_clip(rd.clip(1, "pause"), fps="25", size="640x360", seconds=1.5, audio=(22050, 1, 1.5, 300))
    make_clip(rd.clip(2, "pause"), fps="30000/1001", size="480x480", seconds=1.2, audio=None)
    make_clip(rd.clip(3, "gavel"), fps="24", size="256x384", seconds=2.0, audio=(48000, 2, 2.5, 200))  # sound outlasts picture
    if music is not None:
        config = {**config, "render": {**config["render"], "music": str(music)}}
    return RunContext.open(root, config)


def test_mixed_clips_give_one_constant_fps_final_of_the_planned_length(tmp_path: Path, config: dict) -> None:
    root = tmp_path / "it's a run: 100% ok"
    ctx = _mixed_run(root, config)
    render(ctx)
    info = probe(root / "final.mp4")
    clips = [probe(p) for p in sorted((root / "clips").glob("*.mp4"))]
    lengths = [max(c.video_duration, (c.audio_duration or 0) - 0.03) for c in clips]  # beat 3 grows to its sound
    assert lengths[3] == pytest.approx(2.5, abs=0.03)
    # A constant-fps final holds whole frames: each clip keeps all of its picture and sound, rounded up.
    expected = sum(math.ceil(length * FPS - 1e-6) / FPS for length in lengths)
    assert info.fps == FPS and (info.width, info.height) == (256, 384)
    assert info.frames == round(expected * FPS)
    assert abs(info.video_duration - expected) <= 1 / FPS
    assert 0 <= expected - sum(lengths) < len(lengths) / FPS
    assert abs(info.audio_duration - info.video_duration) <= 0.1
    assert (info.channels, info.sample_rate) == (2, 48000)
    assert abs(integrated_lufs(root / "final.mp4") - (-14)) <= 1.0


def test_speech_longer_than_its_clip_is_caught(tmp_path: Path, config: dict) -> None:
    ctx = _mixed_run(tmp_path / "run", config, hook_audio_s=1.0)  # the clip's audio stops before the speech
    with pytest.raises(StageError, match=r"beat 0's clip carries 1\.\d+ s of audio but its speech lasts 1\.5\d* s.*--regen-beats 0"):
        render(ctx)
    assert not (tmp_path / "run" / "final.mp4").exists()


def test_music_is_ducked_under_speech_and_faded(tmp_path: Path, config: dict) -> None:
    music = tmp_path / "bed.wav"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000:d=3", "-ac", "2", str(music)])  # shorter: it loops
    root = tmp_path / "run"
    render(_mixed_run(root, config, music=music))
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


def test_hostile_text_and_paths_render(run_copy: Path, config: dict) -> None:
    from storyboard.pipeline import run_stages

    line = 'She said "100% yes: it\'s a 猫 😺!" Really\\ok? {curly}'
    edit_plan(run_copy, 1, line=line)
    before = media_hashes(run_copy)
    run_stages(run_copy, config)
    assert changed(before, media_hashes(run_copy)) == {"audio/beat_01.wav", "clips/clip_01_setup.mp4", "final.mp4"}
    srt = (run_copy / "subs.srt").read_text(encoding="utf-8")
    assert "猫 😺!\"" in srt and "Really\\ok?" in srt and "{curly}" in srt
    assert all(p.name.isascii() for p in run_copy.rglob("*"))


def test_characters_no_font_has_are_named(run_copy: Path, config: dict) -> None:
    from storyboard.errors import PreflightError
    from storyboard.pipeline import run_stages

    edit_plan(run_copy, 1, line="Ancient text: \U00013000 here.")  # an Egyptian hieroglyph: no bundled font has it
    with pytest.raises(PreflightError, match="\U00013000"):
        run_stages(run_copy, config)
