"""Beats spread over workers (a local Ray cluster on CPUs, and per-device pools) leave the files and keys of a local run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storyboard.batch import run_batch
from storyboard.distribute import LocalGPUs, RayWorkers
from storyboard.errors import InputError
from storyboard.pipeline import create_run, run_stages
from storyboard.profiles import resolve_config


def keys_and_plans(out: Path) -> dict[str, object]:
    """Per run: the plan text; every image's and speech take's content key; the images' bytes; what each clip
    was made from. (Piper samples noise inside its ONNX graph, unseeded: a take's bytes differ from process to
    process, so clips, whose keys hold the take's hash and length, are compared on everything else.)"""
    found: dict[str, object] = {}
    for plan in sorted(out.glob("*/plan.json")):
        artifacts = json.loads((plan.parent / "run.json").read_text())["artifacts"]
        found[plan.parent.name] = {
            "plan": plan.read_text(),
            "images": {rel: (a["key"], a["hash"]) for rel, a in artifacts.items() if rel.startswith("beats/")},
            "speech": {rel: a["key"] for rel, a in artifacts.items() if rel.startswith("audio/")},
            "clips": {rel: {k: v for k, v in a["inputs"].items() if k not in ("audio", "duration")} for rel, a in artifacts.items() if rel.startswith("clips/")},
            "files": sorted(artifacts),
        }
    return found


def test_batch_on_a_local_ray_cluster_matches_the_local_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    ideas = tmp_path / "ideas.txt"
    ideas.write_text("Why the sky is blue\nHow bread rises\n")
    local = run_batch(ideas, tmp_path / "local", format_name="explainer5")
    assert local["status"] == "ok"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        import storyboard.batch as batch

        made: list[RayWorkers] = []

        def two_workers(config: dict, address: str | None, gpus: str | None) -> RayWorkers:
            made.append(RayWorkers(config, str(address), size=2))
            return made[-1]

        monkeypatch.setattr(batch, "make_workers", two_workers)
        remote = run_batch(ideas, tmp_path / "ray", format_name="explainer5", ray="auto")
    finally:
        ray.shutdown()
    assert remote["status"] == "ok", remote["failed"]
    assert keys_and_plans(tmp_path / "ray") == keys_and_plans(tmp_path / "local")
    assert all(Path(r["final"]).is_file() for r in remote["runs"])
    # Each worker loaded each distributed stage's model at most once for the whole batch.
    assert made and 1 <= remote["loads"]["image"] <= 2 and 1 <= remote["loads"]["video"] <= 2 and remote["loads"]["tts"] <= 2
    assert remote["calls"]["image.draw"] == local["calls"]["image.draw"]


def test_beats_split_across_devices_leave_the_same_run(tmp_path: Path) -> None:
    config = resolve_config("offline")
    roots = [create_run("A cat who wants to be a judge", "explainer5", config, tmp_path / name) for name in ("plain", "split")]
    assert run_stages(roots[0], config).status == "ok"
    workers = LocalGPUs(config, ["cpu", "cpu"])  # CPU stand-ins for cuda:0, cuda:1: the same code path
    try:
        assert run_stages(roots[1], config, workers=workers).status == "ok"
    finally:
        workers.close()
    assert keys_and_plans(tmp_path / "split") == keys_and_plans(tmp_path / "plain")
    manifest = json.loads((roots[1] / "run.json").read_text())
    assert {a.get("device") for rel, a in manifest["artifacts"].items() if rel.startswith("beats/")} == {"cpu"}
    assert workers.loads()["image"] <= 2
    # Per worker: beats made and the seconds spent loading and making them (the batch summary's "workers").
    figures = workers.figures()
    images = sum(1 for rel in manifest["artifacts"] if rel.startswith("beats/"))
    assert sum(row["beats"] for row in figures["image"].values()) == images and set(figures["image"]) <= {"cpu#0", "cpu#1"}
    assert all(row["make_s"] > 0 and row["load_s"] >= 0 for rows in figures.values() for row in rows.values())


def test_ray_and_gpus_together_is_refused() -> None:
    from storyboard.distribute import make_workers

    with pytest.raises(InputError, match="choose one"):
        make_workers({}, "auto", "0,1")
    with pytest.raises(InputError, match="give GPU indices"):
        make_workers({}, None, "first")
