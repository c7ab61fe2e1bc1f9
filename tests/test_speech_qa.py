"""Speech QA of TTS takes: similarity and gap measures, whisper through its own loader, retries keeping the best take."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storyboard.backends import BackendBase, register
from storyboard.errors import PreflightError
from storyboard.pipeline import create_run, run_stages
from storyboard.profiles import resolve_config
from storyboard.speechqa import longest_gap, normalise, similarity

IDEA = "Why the sky is blue"


def test_similarity_ignores_case_and_punctuation_and_reads_cjk_by_character() -> None:
    assert normalise("Order!  In the COURT, please…") == "order in the court please"
    assert similarity("Order! In the court.", "order in the court") == 1.0
    assert similarity("Order in the court", "border patrol") < 0.5
    assert similarity("静粛に！ここは法廷です。", "静粛に ここは法廷です") == 1.0
    assert 0.5 <= similarity("静粛に！ここは法廷です。", "静粛にここは") < 1.0
    assert similarity("anything", "") == 0.0


def test_longest_gap_is_measured_between_first_and_last_sound() -> None:
    rate = 16000
    tone = 0.3 * np.sin(np.linspace(0, 440 * 2 * np.pi, rate // 2)).astype(np.float32)
    quiet = np.zeros(int(1.2 * rate), dtype=np.float32)
    samples = np.concatenate([quiet, tone, quiet, tone, quiet])  # leading/trailing silence does not count
    assert longest_gap(samples, rate) == pytest.approx(1.2, abs=0.03)
    assert longest_gap(np.concatenate([tone, tone]), rate) == 0.0


@register("qa", "scripted")
class ScriptedQA(BackendBase):
    """A recogniser that mishears beat 1's line twice, then hears it; every other line is heard at once."""

    name = "scripted"
    enabled = True
    max_takes, min_similarity, max_gap_s = 3, 0.5, 5.0
    heard: dict[str, int] = {}
    bad_line = current = ""

    def identity(self) -> dict:
        return {"backend": self.name}

    def transcribe(self, wav: Path, language: str) -> str:
        line = ScriptedQA.current
        count = ScriptedQA.heard.get(line, 0)
        ScriptedQA.heard[line] = count + 1
        return "mumble grumble" if line == ScriptedQA.bad_line and count < 2 else line


def test_a_take_failing_twice_is_retried_and_the_passing_take_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = resolve_config("offline", {"qa": {"backend": "scripted"}})
    root = create_run(IDEA, "explainer5", config, tmp_path)
    plan = json.loads((root / "plan.json").read_text())
    ScriptedQA.bad_line, ScriptedQA.heard = plan["beats"][0]["line"], {}
    import storyboard.video as video

    real = video.check_take

    def tracking(qa, wav, line, language, seed, *rest):  # noqa: ANN001, ANN002, ANN202 - the line under test
        ScriptedQA.current = line
        return real(qa, wav, line, language, seed, *rest)

    monkeypatch.setattr(video, "check_take", tracking)
    summary = run_stages(root, config, stages=("visual", "video"))
    assert summary.status == "ok", summary
    artifacts = json.loads((root / "run.json").read_text())["artifacts"]
    beat1 = artifacts["audio/beat_01.wav"]
    assert [t["ok"] for t in beat1["takes"]] == [False, False, True] and beat1["kept_take"] == 3 and beat1["qa_ok"]
    assert beat1["takes"][0]["heard"] == "mumble grumble" and len({t["seed"] for t in beat1["takes"]}) == 3
    others = [a for rel, a in artifacts.items() if rel.startswith("audio/") and rel != "audio/beat_01.wav"]
    assert others and all(a["kept_take"] == 1 and len(a["takes"]) == 1 for a in others)
    assert not list(root.rglob(".*.tmp-*"))  # the rejected takes are gone
    assert summary.calls["tts.speak"] == len(others) + 3


def test_whisper_checkpoint_loads_through_load_model_and_a_failing_line_keeps_its_best_take(tmp_path: Path) -> None:
    pytest.importorskip("whisper")
    import tiny_models

    checkpoint = tiny_models.whisper_checkpoint(tmp_path / "whisper" / "tiny-random.pt")
    config = resolve_config("offline", {"qa": {"backend": "whisper", "model": str(checkpoint), "device": "cpu", "max_takes": 2}})
    root = create_run(IDEA, "explainer5", config, tmp_path / "runs")
    summary = run_stages(root, config, stages=("visual", "video"))
    assert summary.status == "ok", summary
    assert summary.calls["qa.load"] == 1  # one recogniser load for every line of the stage
    artifacts = json.loads((root / "run.json").read_text())["artifacts"]
    speech = {rel: a for rel, a in artifacts.items() if rel.startswith("audio/")}
    # Random weights never hear the line: every line gets both takes, the better one is kept, and flagged.
    for entry in speech.values():
        assert len(entry["takes"]) == 2 and not entry["qa_ok"] and entry["kept_take"] in (1, 2)
        assert all(0.0 <= t["similarity"] < 0.5 for t in entry["takes"])
    assert all(a["inputs"]["qa"]["model"] == str(checkpoint) for a in speech.values())


def test_a_whisper_checkpoint_with_nan_weights_is_refused_naming_the_file_and_tensor(tmp_path: Path) -> None:
    pytest.importorskip("whisper")
    import tiny_models
    import torch

    from storyboard.backends.recognisers import WhisperQA

    checkpoint = tiny_models.whisper_checkpoint(tmp_path / "tiny-random.pt")
    saved = torch.load(checkpoint)
    saved["model_state_dict"]["decoder.positional_embedding"][3, 5] = float("nan")
    torch.save(saved, checkpoint)
    with pytest.raises(PreflightError, match=f"{checkpoint} has NaN or infinite weights in decoder.positional_embedding"):
        with WhisperQA({"model": str(checkpoint), "device": "cpu"}):
            pass


def test_a_named_whisper_model_not_on_disk_is_an_error_with_the_fetch_command(tmp_path: Path) -> None:
    pytest.importorskip("whisper")
    from storyboard.backends.recognisers import WhisperQA

    qa = WhisperQA({"model": "small", "download_root": str(tmp_path)})
    with pytest.raises(PreflightError, match="whisper model small is not on this machine.*whisper.load_model\\('small'\\)"):
        qa.checkpoint()


def test_a_backend_whose_package_is_missing_is_a_failed_check_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """`storyboard doctor` on a box without openai-whisper names the package instead of raising ImportError."""
    import sys

    from storyboard.preflight import check_backends

    monkeypatch.setitem(sys.modules, "whisper", None)  # `import whisper` now raises ImportError
    checks = {c.name: c for c in check_backends(resolve_config("offline", {"qa": {"backend": "whisper", "model": "small"}}))}
    assert not checks["qa"].ok
    assert "python package whisper is not installed" in checks["qa"].detail and ".[gpu]" in checks["qa"].fix
    assert checks["tts"].ok  # the other backends are still checked
