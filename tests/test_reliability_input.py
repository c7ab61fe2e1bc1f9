"""RELIABILITY.md cases 1-9: bad input gets exit 2 naming the file and field; nothing is lost."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storyboard.backends import BackendBase, ImageRequest, register
from storyboard.errors import PreflightError
from storyboard.media import probe
from storyboard.pipeline import run_stages
from storyboard.render import render
from storyboard.status import status

from helpers import changed, cli, edit_plan, media_hashes, mixed_run

FPS = 24


@pytest.mark.parametrize(
    ("breakage", "field"),
    [("{not json", "not valid JSON"), ('{"idea": "x"}', "field format"), (None, "field beats[2].duration_sec (beat 3)"), ("", "")],
)
def test_case_01_invalid_or_missing_plan_exits_2_naming_path_and_field(run_copy: Path, breakage: str | None, field: str) -> None:
    plan = run_copy / "plan.json"
    if breakage is None:
        edit_plan(run_copy, 3, duration_sec="long")
    elif breakage == "":
        plan.unlink()
        field = "no plan here"
    else:
        plan.write_text(breakage)
    before = media_hashes(run_copy)
    manifest = (run_copy / "run.json").read_bytes()
    result = cli("run", "--dir", str(run_copy))
    assert result.returncode == 2
    assert str(plan) in result.stderr and field in result.stderr
    assert media_hashes(run_copy) == before and (run_copy / "run.json").read_bytes() == manifest


def test_case_02_unknown_or_broken_format_lists_valid_ones_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("run", "--idea", "x", "--format", "nope", "--out", str(out))
    assert result.returncode == 2 and "valid formats: drama10, explainer5" in result.stderr
    prompts = tmp_path / "prompts"
    (prompts / "formats").mkdir(parents=True)
    (prompts / "formats" / "bad.yaml").write_text("name: bad\nbeats: [unclosed\n")
    env_result = subprocess.run(
        [sys.executable, "-m", "storyboard.cli", "run", "--idea", "x", "--format", "bad", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "STORYBOARD_PROMPTS": str(prompts)},
    )
    assert env_result.returncode == 2 and "bad.yaml: broken YAML" in env_result.stderr and "valid formats: bad" in env_result.stderr
    assert not out.exists()


def test_case_03_hostile_text_renders_with_ascii_file_names(run_copy: Path, config: dict) -> None:
    line = 'She said "100% yes: it\'s a 猫 😺!"\nReally\\ok? {curly}'
    edit_plan(run_copy, 1, line=line)
    before = media_hashes(run_copy)
    run_stages(run_copy, config)
    assert changed(before, media_hashes(run_copy)) == {"audio/beat_01.wav", "clips/clip_01_setup.mp4", "final.mp4"}
    srt = (run_copy / "subs.srt").read_text(encoding="utf-8")
    assert "猫 😺!\"" in srt and "Really\\ok?" in srt and "{curly}" in srt
    assert all(p.name.isascii() for p in run_copy.rglob("*"))


def test_case_04_run_directory_with_spaces_quotes_colons_percent_and_non_ascii(run_copy: Path) -> None:
    assert all(ch in str(run_copy) for ch in " ':%ü")
    result = cli("run", "--dir", str(run_copy), "--regen-beats", "all")
    assert result.returncode == 0, result.stderr
    info = probe(run_copy / "final.mp4")
    assert abs(info.video_duration - info.audio_duration) <= 0.1


def test_case_05_glyphs_no_font_has_are_named(run_copy: Path, config: dict) -> None:
    edit_plan(run_copy, 1, line="Ancient text: \U00013000 here.")  # an Egyptian hieroglyph: no bundled font has it
    before = media_hashes(run_copy)
    with pytest.raises(PreflightError, match="\U00013000"):
        run_stages(run_copy, config)
    assert media_hashes(run_copy) == before  # failed before any work


@register("image", "broken")
class BrokenImages(BackendBase):
    """Writes what a failing server sends back: nothing, half a PNG, or an HTML error page."""

    name = "broken"

    def draw(self, request: ImageRequest, out: Path) -> None:
        kind = request.number % 3
        if kind == 0:
            out.write_bytes(b"")
        elif kind == 1:
            out.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        else:
            out.write_text("<html><body>502 Bad Gateway</body></html>")


def test_case_06_empty_truncated_or_error_page_outputs_are_rejected(run_copy: Path, config: dict) -> None:
    config = {**config, "image": {"backend": "broken"}}
    before = media_hashes(run_copy)
    manifest = json.loads((run_copy / "run.json").read_text())["artifacts"]
    summary = None
    with pytest.raises(Exception, match="beats failed"):
        summary = run_stages(run_copy, config, keep_going=True, stages=("visual",))
    assert summary is None
    assert media_hashes(run_copy) == before  # every old image kept, nothing half-written published
    after = json.loads((run_copy / "run.json").read_text())["artifacts"]
    assert {k: v["hash"] for k, v in after.items() if k.startswith("beats/")} == {k: v["hash"] for k, v in manifest.items() if k.startswith("beats/")}
    assert not [p for p in run_copy.rglob("*") if ".tmp-" in p.name]


def test_case_07_mixed_clips_give_a_constant_fps_final_of_the_planned_length(tmp_path: Path, config: dict) -> None:
    root = tmp_path / "it's a run: 100% ok"
    render(mixed_run(root, config))
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


def test_case_08_speech_longer_than_its_beat_grows_the_beat(run_copy: Path, config: dict) -> None:
    long_line = "Absolutely not, and let me tell you exactly why, in great detail, because rules are rules and they always will be."
    edit_plan(run_copy, 3, line=long_line, duration_sec=1.0)
    run_stages(run_copy, config)  # the render checks every last word is audible in final.mp4
    wav = probe(run_copy / "audio" / "beat_03.wav").duration
    clip = probe(run_copy / "clips" / "clip_03_refusal.mp4")
    assert wav > 4.0 and clip.video_duration >= wav + 0.4 - 1 / FPS
    assert status(run_copy, config)["final"]["state"] == "fresh"


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--regen-beats=0,99"], "no beat 99; valid beats are 0-10"),
    (["run", "--regen-beats=x"], "'x' is not a beat number"),
    (["run", "--regen-beats=-1"], "valid beats are 0-10"),
    (["visual", "--only-beat", "-1"], "valid beats are 0-10"),
])
def test_case_09_bad_beat_numbers_exit_2_naming_valid_ones(run_copy: Path, args: list[str], message: str) -> None:
    before = media_hashes(run_copy)
    command = [args[0], "--dir", str(run_copy), *args[1:]] if args[0] == "run" else [args[0], str(run_copy), *args[1:]]
    result = cli(*command)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert media_hashes(run_copy) == before
