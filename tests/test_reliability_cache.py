"""RELIABILITY.md cases 10-14: exactly the affected artifacts are redone; nothing is silently lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from storyboard.pipeline import run_stages
from storyboard.status import status

from helpers import changed, cli, edit_plan, media_hashes


def test_case_10_rerun_with_nothing_changed_makes_no_calls(run_copy: Path, config: dict) -> None:
    before = media_hashes(run_copy)
    summary = run_stages(run_copy, config)
    assert summary.status == "up to date" and summary.calls == {}
    result = cli("run", "--dir", str(run_copy))
    assert result.returncode == 0 and "up to date" in result.stderr
    assert media_hashes(run_copy) == before


def test_case_11_one_line_edited_redoes_only_its_audio_clip_and_render(run_copy: Path, config: dict) -> None:
    before = media_hashes(run_copy)
    edit_plan(run_copy, 3, line="Never. Rules are rules, and the answer is still no!")
    cells = status(run_copy, config)["beats"]
    assert cells[3]["audio"] == {"state": "stale", "why": "line"}
    assert cells[3]["clip"]["state"] == "stale" and cells[3]["image"]["state"] == "fresh"
    summary = run_stages(run_copy, config)
    assert changed(before, media_hashes(run_copy)) == {"audio/beat_03.wav", "clips/clip_03_refusal.mp4", "final.mp4"}
    assert summary.calls == {"tts.load": 1, "tts.speak": 1, "video.load": 1, "video.animate": 1, "render.segment": 1, "render.encode": 1}
    assert "Never." in (run_copy / "subs.srt").read_text()


def test_case_12_model_seed_preset_and_stage_version_changes_stale_exactly_what_they_feed(
    run_copy: Path, config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def states(cfg: dict, column: str) -> set[tuple[str, str]]:
        return {(row[column]["state"], row[column]["why"]) for row in status(run_copy, cfg)["beats"].values()}

    zoomed = {**config, "video": {**config["video"], "zoom": 1.2}}  # a video model parameter
    assert states(zoomed, "clip") == {("stale", "backend")} and states(zoomed, "image") == {("fresh", "")}
    final = {**config, "image": {**config["image"], "quality": "final"}}  # the image preset
    assert states(final, "image") == {("stale", "quality")}
    assert {s for s, _ in states(final, "audio")} <= {"fresh", "-"}
    edit_plan(run_copy, 0)  # touch nothing: keys ignore timestamps
    assert states(config, "image") == {("fresh", "")}
    import json

    plan = json.loads((run_copy / "plan.json").read_text())
    plan["seed"] = 7
    (run_copy / "plan.json").write_text(json.dumps(plan))
    assert states(config, "image") == {("stale", "seed")}
    plan["seed"] = 0
    (run_copy / "plan.json").write_text(json.dumps(plan))
    import storyboard.video

    monkeypatch.setattr(storyboard.video, "STAGE_VERSION", storyboard.video.STAGE_VERSION + 1)
    assert states(config, "clip") == {("stale", "stage")}
    assert {s for s, _ in states(config, "audio")} == {"stale", "-"}
    assert states(config, "image") == {("fresh", "")}


def test_case_13_a_file_replaced_by_hand_is_kept_and_followed(run_copy: Path, config: dict) -> None:
    from PIL import Image

    mine = run_copy / "beats" / "beat_05_twist.png"
    Image.new("RGB", (512, 768), (200, 30, 30)).save(mine)
    mine_bytes = mine.read_bytes()
    before = media_hashes(run_copy)
    run_stages(run_copy, config)
    assert mine.read_bytes() == mine_bytes  # never overwritten
    assert changed(before, media_hashes(run_copy)) == {"clips/clip_05_twist.mp4", "final.mp4"}
    assert status(run_copy, config)["beats"][5]["image"]["state"] == "user"
    edit_plan(run_copy, 5, image_prompt="Mia somewhere else entirely")
    run_stages(run_copy, config)
    assert mine.read_bytes() == mine_bytes  # still the user's, even with its prompt changed
    run_stages(run_copy, config, regen="5")  # forcing takes it back
    assert mine.read_bytes() != mine_bytes


def test_case_14_corrupt_manifest_warns_and_is_rebuilt_without_losing_work(
    run_copy: Path, config: dict, caplog: pytest.LogCaptureFixture
) -> None:
    before = media_hashes(run_copy)
    (run_copy / "run.json").write_text('{"artifacts": {')
    with caplog.at_level(logging.WARNING, logger="storyboard"):
        summary = run_stages(run_copy, config)
    assert "rebuilding it from the files on disk" in caplog.text
    assert summary.calls.get("image.draw", 0) == 0 and summary.calls.get("tts.speak", 0) == 0
    assert changed(before, media_hashes(run_copy)) <= {"final.mp4"}


def test_a_damaged_cached_segment_is_encoded_again_and_the_final_is_whole(run_copy: Path, config: dict, caplog: pytest.LogCaptureFixture) -> None:
    segment = sorted((run_copy / "render").glob("seg_05_*.mp4"))[0]
    segment.write_bytes(segment.read_bytes()[: segment.stat().st_size // 3])  # a disk or copy cut it short
    summary = run_stages(run_copy, config, regen="none")
    assert summary.status == "ok"
    assert "the cached segments did not make a good final" in caplog.text
    assert summary.calls == {"render.encode": 2, "render.segment": 11}  # one failed join, all segments made again
    from storyboard.media import probe

    info = probe(run_copy / "final.mp4")
    assert abs((info.video_duration or 0) - (info.audio_duration or 0)) <= 0.1
