"""Loading the next stage's models while the current stage works (storyboard/ahead.py, BackendPool.load_ahead)."""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from storyboard import ahead
from storyboard.backends import register
from storyboard.backends.heuristic_judge import HeuristicJudge
from storyboard.context import BackendPool
from storyboard.errors import InputError
from storyboard.pipeline import STAGES, create_run, run_stages

IDEA = "A cat who wants to be a judge"
EVENTS: list[tuple[str, str]] = []  # (what, thread name)
FAIL_NEXT_ENTER: list[bool] = []


@register("judge", "spy")
class SpyJudge(HeuristicJudge):
    """The heuristic judge, noting on which thread it loads and when it is freed; fails one load on request."""

    name = "spy"

    def __enter__(self) -> SpyJudge:
        EVENTS.append(("enter", threading.current_thread().name))
        if FAIL_NEXT_ENTER:
            FAIL_NEXT_ENTER.pop()
            raise RuntimeError("out of memory (test)")
        return self

    def __exit__(self, *exc: object) -> None:
        EVENTS.append(("exit", threading.current_thread().name))


@pytest.fixture
def spy_config(config: dict) -> dict:
    EVENTS.clear()
    FAIL_NEXT_ENTER.clear()
    config["judge"] = {"backend": "spy"}
    return config


def fresh_run(tmp_path: Path, config: dict) -> Path:
    return create_run(IDEA, "drama10", config, tmp_path)


def test_the_next_stage_loads_ahead_on_a_thread_once(tmp_path: Path, spy_config: dict, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="storyboard")
    spy_config["load_ahead"] = "on"
    summary = run_stages(fresh_run(tmp_path, spy_config), spy_config, stages=STAGES)
    assert summary.status == "ok" and summary.final
    enters = [thread for what, thread in EVENTS if what == "enter"]
    assert len(enters) == 1 and enters[0].startswith("load-ahead")  # loaded while the visual stage drew
    assert [what for what, _ in EVENTS] == ["enter", "exit"]  # freed once, after the judge stage
    assert summary.calls["judge.load"] == 1 and summary.calls["tts.load"] == 1
    assert "video 1/8 voice 00 (ahead)" in caplog.text  # the lines were voiced while the judge worked, once each
    assert summary.calls["tts.speak"] == 8


def test_auto_loads_nothing_ahead_without_a_gpu(tmp_path: Path, spy_config: dict) -> None:
    summary = run_stages(fresh_run(tmp_path, spy_config), spy_config, stages=("visual", "judge"))
    assert summary.status == "ok"
    assert [thread for what, thread in EVENTS if what == "enter"] == ["MainThread"]


def test_a_load_ahead_that_fails_is_loaded_again_by_its_stage(tmp_path: Path, spy_config: dict, caplog: pytest.LogCaptureFixture) -> None:
    spy_config["load_ahead"] = "on"
    FAIL_NEXT_ENTER.append(True)
    summary = run_stages(fresh_run(tmp_path, spy_config), spy_config, stages=("visual", "judge"))
    assert summary.status == "ok"
    enters = [thread for what, thread in EVENTS if what == "enter"]
    assert enters[0].startswith("load-ahead") and enters[1] == "MainThread"
    assert "loading ahead failed (RuntimeError: out of memory (test)); loading it now" in caplog.text
    assert summary.calls["judge.load"] == 1


def test_what_a_later_call_will_run_stays_loaded_in_the_pool_and_is_freed_if_unused(tmp_path: Path, spy_config: dict) -> None:
    spy_config["load_ahead"] = "on"
    root = fresh_run(tmp_path, spy_config)
    pool = BackendPool(spy_config)
    run_stages(root, spy_config, stages=("visual",), then=("judge",), pool=pool)
    assert [what for what, _ in EVENTS] == ["enter"]  # kept for the next call
    summary = run_stages(root, spy_config, stages=("judge",), pool=pool)
    assert summary.calls["judge.load"] == 1 and [what for what, _ in EVENTS] == ["enter", "exit"]
    EVENTS.clear()
    (root / "beats").joinpath("beat_03_refusal.png").unlink()  # the visual stage has work again
    run_stages(root, spy_config, stages=("visual",), then=("judge",), pool=pool)
    pool.drop_ahead()  # the caller changed its mind: nothing takes the judge
    assert [what for what, _ in EVENTS] == ["enter", "exit"]


def test_a_bad_load_ahead_setting_names_the_field(tmp_path: Path, spy_config: dict) -> None:
    root = fresh_run(tmp_path, spy_config)
    spy_config["load_ahead"] = "sometimes"
    with pytest.raises(InputError, match="load_ahead: 'sometimes'; choose auto, on or off"):
        run_stages(root, spy_config, stages=("visual",))


def test_auto_loads_ahead_only_what_fits_beside_the_headroom(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"\0" * 3 * 2**20)
    (weights / "notes.txt").write_bytes(b"\0" * 50 * 2**20)  # not weights: not counted
    config: dict[str, Any] = {"judge": {"backend": "vlm", "model": str(weights)}, "load_ahead_headroom_gib": 1 / 1024}
    pool = BackendPool(config)
    assert ahead.weights_bytes(pool.get("judge")) == 3 * 2**20
    started: list[Any] = []
    monkeypatch.setattr(pool, "load_ahead", lambda jobs, after=(): started.append(jobs))
    monkeypatch.setattr(ahead, "gpu_room", lambda device: 4 * 2**20 - 1)  # 3 MiB + 1 MiB headroom does not fit
    ahead.start(pool, config, "judge")
    assert started == []
    monkeypatch.setattr(ahead, "gpu_room", lambda device: 4 * 2**20)
    ahead.start(pool, config, "judge")
    assert started == [[("judge", None)]]


def test_a_later_stage_loads_ahead_only_when_it_fits_too_and_after_the_nearer_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, mib in (("flux", 2), ("vlm", 3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"\0" * mib * 2**20)
    config: dict[str, Any] = {"image": {"backend": "diffusers", "model": str(tmp_path / "flux")},
                              "judge": {"backend": "vlm", "model": str(tmp_path / "vlm")}, "load_ahead_headroom_gib": 1 / 1024}
    pool = BackendPool(config)
    calls: list[tuple[list, list]] = []
    monkeypatch.setattr(pool, "load_ahead", lambda jobs, after=(): calls.append((jobs, list(after))))
    monkeypatch.setattr(ahead, "gpu_room", lambda device: 6 * 2**20 - 1)  # 2 + 1 MiB fit; 2 + 3 + 1 do not
    ahead.start(pool, config, ("visual", "judge"))
    assert calls == [([("image", None)], [])]
    calls.clear()
    monkeypatch.setattr(ahead, "gpu_room", lambda device: 6 * 2**20)
    ahead.start(pool, config, ("visual", "judge"))
    assert calls == [([("image", None)], []), ([("judge", None)], ["image"])]  # the judge's load waits for Flux's
    calls.clear()
    ahead.start(pool, {**config, "load_ahead_stages": 1}, ("visual", "judge"))
    assert calls == [([("image", None)], [])]
    with pytest.raises(InputError, match="load_ahead_stages: 0; give a whole number of stages, 1 or more"):
        ahead.start(pool, {**config, "load_ahead_stages": 0}, ("visual", "judge"))


def test_loads_ahead_after_another_start_when_it_has_ended(tmp_path: Path, spy_config: dict) -> None:
    pool = BackendPool(spy_config)
    gate = threading.Event()
    order: list[str] = []

    def slow(_: Any) -> None:
        gate.wait(10)
        order.append("tts prepared")

    pool.load_ahead([("tts", slow)])
    pool.load_ahead([("judge", lambda backend: order.append("judge loaded"))], after=["tts"])
    time.sleep(0.3)
    assert order == [] and pool.loading_ahead()  # the judge's load waits for the tts's
    gate.set()
    assert pool.loaded_ahead("judge") and order == ["tts prepared", "judge loaded"]
    pool.drop_ahead()


@register("judge", "gated")
class GatedJudge(HeuristicJudge):
    """The heuristic judge with a load that waits for the test's gate, and a warm-up call that is counted."""

    name = "gated"
    gate = threading.Event()
    warm_calls: list[str] = []

    def __enter__(self) -> GatedJudge:
        assert self.gate.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def warm(self) -> None:
        self.warm_calls.append(threading.current_thread().name)


@pytest.mark.parametrize("stage_waits", [True, False])
def test_the_warm_up_call_is_left_out_when_the_stage_already_waits(config: dict, stage_waits: bool) -> None:
    """The warm-up only moves the kernels' loading off the stage's path: made while nobody needs the model yet,
    left out once the stage waits for it (its first item loads them as soon, without the warm-up's own work)."""
    GatedJudge.gate.clear()
    GatedJudge.warm_calls.clear()
    pool = BackendPool({**config, "judge": {"backend": "gated"}})
    pool.load_ahead([("judge", None)])
    used: list[Any] = []

    def stage() -> None:
        with pool.loaded("judge", Counter()) as backend:
            used.append(backend)

    if stage_waits:
        waiter = threading.Thread(target=stage)
        waiter.start()
        deadline = time.monotonic() + 10
        while "judge" not in pool._awaited and time.monotonic() < deadline:  # the stage is in the wait
            time.sleep(0.01)
        GatedJudge.gate.set()
        waiter.join(10)
    else:
        GatedJudge.gate.set()
        assert pool.loaded_ahead("judge")  # loaded (and warmed) before the stage asks
        stage()
    assert len(used) == 1 and pool.loads["judge"] == 1
    assert GatedJudge.warm_calls == ([] if stage_waits else ["load-ahead_0"])
    assert (pool.warm_s["judge"] is None) == stage_waits
    pool.release()


def test_models_loaded_ahead_and_warmed_make_the_same_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The image, judge and video backends load ahead and make their warm-up calls; the beats and voices come out
    byte for byte as when each stage loads its own model."""
    pytest.importorskip("diffusers")
    import hashlib
    import logging

    import tiny_models

    from storyboard.profiles import resolve_config

    models = tmp_path / "models"
    sections = {
        "image": {"backend": "diffusers", "model": str(tiny_models.flux(models / "flux")), "device": "cpu", "edit": "img2img",
                  "presets": {"draft": {"steps": 2, "long_side": None}}},
        "judge": {"backend": "vlm", "model": str(tiny_models.vlm(models / "vlm")), "device": "cpu", "max_retries": 0, "max_new_tokens": 4},
        "video": {"backend": "ltx2", "model": str(tiny_models.ltx2(models / "ltx2")), "device": "cpu", "max_sequence_length": 32,
                  "presets": {"distilled": {"long_side": 64}}},
    }
    made: dict[str, dict[str, str]] = {}
    caplog.set_level(logging.INFO, logger="storyboard")
    for setting in ("off", "on"):
        config = {**resolve_config("offline", sections), "load_ahead": setting}
        pool = BackendPool(config)  # as `storyboard run` does: the image model loads while the plan is written
        pool.after_load = functools.partial(ahead.start, pool, config, "visual")
        root = create_run(IDEA, "explainer5", config, tmp_path / setting, pool=pool)
        summary = run_stages(root, config, pool=pool)
        assert summary.status == "ok", summary
        made[setting] = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                         for folder in ("beats", "audio") for p in sorted((root / folder).iterdir())}
    assert made["on"] == made["off"] and len(made["on"]) > 6
    for capability, name in (("image", "diffusers"), ("judge", "vlm"), ("tts", "piper"), ("video", "ltx2")):
        assert f"{capability}: {name} loaded ahead" in caplog.text
    assert "warm-up call failed" not in caplog.text


def test_warming_the_voice_and_the_recogniser_changes_no_take(tmp_path: Path) -> None:
    pytest.importorskip("whisper")
    import tiny_models

    from storyboard.backends import VoiceSpec, create

    tts = create("tts", {"backend": "transformers", "model": str(tiny_models.vits(tmp_path / "vits")), "device": "cpu"})
    qa = create("qa", {"backend": "whisper", "model": str(tiny_models.whisper_checkpoint(tmp_path / "whisper.pt")), "device": "cpu"})
    voice = VoiceSpec(voice="default", pitch=0.0, speed=1.0)
    with tts, qa:
        tts.speak("Hi there.", voice, "en", 7, tmp_path / "before.wav")
        heard = qa.transcribe(tmp_path / "before.wav", "en")
        tts.warm()
        qa.warm()
        tts.speak("Hi there.", voice, "en", 7, tmp_path / "after.wav")
        assert (tmp_path / "after.wav").read_bytes() == (tmp_path / "before.wav").read_bytes()
        assert qa.transcribe(tmp_path / "after.wav", "en") == heard


def test_a_forced_line_voiced_ahead_is_not_voiced_again(run_copy: Path, spy_config: dict, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="storyboard")
    spy_config["load_ahead"] = "on"
    summary = run_stages(run_copy, spy_config, regen="3")
    assert summary.status == "ok"
    assert "video 1/1 voice 03 (ahead)" in caplog.text
    assert summary.calls["tts.speak"] == 1 and summary.calls["video.animate"] == 1
