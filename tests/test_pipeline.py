"""The cache contract on a real offline run: exactly the affected artifacts are redone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from storyboard.context import RunContext
from storyboard.media import decode_audio, probe, speech_span
from storyboard.pipeline import run, run_stages
from storyboard.status import status

from helpers import changed, edit_plan, media_hashes


def test_final_is_a_portrait_h264_aac_short(offline_run: Path) -> None:
    info = probe(offline_run / "final.mp4")
    assert (info.width, info.height) == (512, 768)
    assert (info.video_codec, info.pix_fmt, info.profile) == ("h264", "yuv420p", "High")
    assert (info.audio_codec, info.channels, info.sample_rate) == ("aac", 2, 48000)
    assert abs(info.video_duration - info.audio_duration) <= 0.1
    assert 35 < info.video_duration < 60
    with open(offline_run / "final.mp4", "rb") as handle:
        head = handle.read(64 * 1024)
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head  # +faststart


def test_every_line_is_audible_to_its_last_word(offline_run: Path, config: dict) -> None:
    ctx = RunContext.open(offline_run, config)
    final = decode_audio(offline_run / "final.mp4", 16000)
    start = 0.0
    for n in ctx.plan.beat_numbers:
        clip = probe(ctx.rd.clip(n, ctx.plan.beat_type(n)))
        wav = ctx.rd.audio(n)
        if wav.is_file():
            span = speech_span(decode_audio(wav), 16000)
            assert span is not None
            end = start + span[1]
            tail = final[int((end - 0.25) * 16000) : int(end * 16000)]
            assert 20 * np.log10(np.sqrt(np.mean(tail**2))) > -45, f"beat {n}: last word not audible"
            assert clip.video_duration >= span[1] + 0.3  # clip outlasts its speech
        start += round(clip.video_duration * ctx.plan.fps) / ctx.plan.fps


def test_each_stage_loads_its_model_once(offline_run: Path) -> None:
    import json

    stages = json.loads((offline_run / "run.json").read_text())["stages"]
    assert set(stages) == {"plan", "visual", "judge", "video", "render"}
    assert stages["plan"]["attempts"] == 1 and stages["plan"]["seconds"] >= 0
    assert stages["visual"]["beats"] == list(range(11))


def test_editing_an_image_prompt_redoes_image_clip_and_render(run_copy: Path, config: dict) -> None:
    before = media_hashes(run_copy)
    edit_plan(run_copy, 3, image_prompt="Mr. Grant pointing at the door, furious")
    assert status(run_copy, config)["beats"][3]["image"] == {"state": "stale", "why": "image_prompt"}
    run_stages(run_copy, config)
    assert changed(before, media_hashes(run_copy)) == {"beats/beat_03_refusal.png", "clips/clip_03_refusal.mp4", "final.mp4"}


def test_regen_beats_redoes_exactly_those_beats(run_copy: Path, config: dict) -> None:
    before = media_hashes(run_copy)
    run_stages(run_copy, config, regen="2,4")
    assert changed(before, media_hashes(run_copy)) == {
        "beats/beat_02_ask.png", "audio/beat_02.wav", "clips/clip_02_ask.mp4",
        "beats/beat_04_dejection.png", "clips/clip_04_dejection.mp4", "final.mp4",
    }


def test_regen_none_only_renders(run_copy: Path, config: dict) -> None:
    before = media_hashes(run_copy)
    (run_copy / "subs.ass").unlink()
    summary = run_stages(run_copy, config, regen="none")
    assert summary.calls == {"render.encode": 1}
    assert changed(before, media_hashes(run_copy)) <= {"final.mp4"}
    assert (run_copy / "subs.ass").is_file()


def test_explainer_format_runs(tmp_path: Path) -> None:
    summary = run(idea="Why the sky is blue", format_name="explainer5", out=tmp_path)
    assert summary.status == "ok"
    info = probe(Path(summary.final))
    assert abs(info.video_duration - info.audio_duration) <= 0.1


def test_copy_is_independent(offline_run: Path, run_copy: Path) -> None:
    assert media_hashes(offline_run) == media_hashes(run_copy)
    shutil.rmtree(run_copy / "clips")
    assert (offline_run / "clips").is_dir()


def test_each_beats_picture_is_encoded_while_the_clips_are_made_and_the_render_joins_them(offline_run: Path) -> None:
    import json

    render = json.loads((offline_run / "run.json").read_text())["stages"]["render"]
    assert (render["segments_encoded"], render["segments_cached"]) == (0, 11)  # all 11 made during the video stage
    assert len(list((offline_run / "render").glob("seg_*.mp4"))) == 11


def test_without_load_ahead_the_render_encodes_the_segments_and_drops_those_no_longer_shown(run_copy: Path, config: dict) -> None:
    old = sorted(p.name for p in (run_copy / "render").glob("seg_*.mp4"))
    shutil.rmtree(run_copy / "render")
    config["load_ahead"] = "off"
    summary = run_stages(run_copy, config, regen="none")
    assert summary.calls == {"render.segment": 11, "render.encode": 1}
    assert sorted(p.name for p in (run_copy / "render").glob("seg_*.mp4")) == old  # same keys, same names
    edit_plan(run_copy, 3, line="Never. Rules are rules, and the answer is still no!")
    summary = run_stages(run_copy, config)
    assert summary.calls["render.segment"] == 1  # only the edited beat's picture
    segments = sorted(p.name for p in (run_copy / "render").glob("seg_*.mp4"))
    assert len(segments) == 11 and len(set(segments) - set(old)) == 1 and not any(name.startswith("seg_03_") for name in set(old) & set(segments))
    info = probe(run_copy / "final.mp4")
    assert info.video_codec == "h264" and abs((info.video_duration or 0) - (info.audio_duration or 0)) <= 0.1


def test_a_run_named_by_a_relative_path_renders(run_copy: Path, config: dict, monkeypatch) -> None:
    shutil.rmtree(run_copy / "render")
    monkeypatch.chdir(run_copy.parent)  # `storyboard run --idea ...` with the default relative `--out outputs`
    summary = run_stages(Path(run_copy.name), config, regen="none")
    assert summary.status == "ok" and summary.calls["render.segment"] == 11
