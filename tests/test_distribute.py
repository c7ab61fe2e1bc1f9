"""Beats spread over workers (a local Ray cluster on CPUs, and per-device pools) leave the files and keys of a local run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storyboard.batch import run_batch
from storyboard.distribute import GPUProcesses, LocalGPUs, RayWorkers, make_workers
from storyboard.errors import InputError, StageError
from storyboard.pipeline import create_run, open_run, run_stages
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

        def two_workers(config: dict, address: str | None, gpus: str | None, **_: object) -> RayWorkers:
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


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_beats_split_across_devices_leave_the_same_run(tmp_path: Path, mode: str) -> None:
    config = {**resolve_config("offline"), "gpu_workers": mode}
    roots = [create_run("A cat who wants to be a judge", "explainer5", config, tmp_path / name) for name in ("plain", "split")]
    assert run_stages(roots[0], config).status == "ok"
    workers = make_workers(config, None, "cpu,cpu")  # CPU stand-ins for cuda:0, cuda:1: the same code path
    assert isinstance(workers, GPUProcesses if mode == "process" else LocalGPUs)
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


def test_batch_on_worker_processes_matches_the_local_batch(tmp_path: Path) -> None:
    """`storyboard batch --gpus` with a worker process per device (CPU stand-ins): the same plans, files and keys as
    the plain batch; the plans are made in the processes; each process loads each distributed stage's model once,
    the image model while the plans are written (load_ahead on)."""
    import yaml

    from storyboard.profiles import profiles_dir

    profile = tmp_path / "offline-ahead.yaml"
    settings = yaml.safe_load((profiles_dir() / "offline.yaml").read_text())
    profile.write_text(yaml.safe_dump({**settings, "load_ahead": "on"}))
    ideas = tmp_path / "ideas.txt"
    ideas.write_text("Why the sky is blue\nHow bread rises\n")
    local = run_batch(ideas, tmp_path / "local", format_name="explainer5", profile=str(profile))
    split = run_batch(ideas, tmp_path / "split", format_name="explainer5", profile=str(profile), gpus="cpu,cpu")
    assert local["status"] == split["status"] == "ok", split["failed"]
    assert keys_and_plans(tmp_path / "split") == keys_and_plans(tmp_path / "local")
    assert split["loads"]["image"] == 2 and split["loads"]["video"] <= 2 and split["loads"]["tts"] <= 2
    assert set(split["workers"]["image"]) == {"cpu#0", "cpu#1"}
    # The plans were made side by side in the worker processes (one planner per process), none in this one.
    assert sum(row["beats"] for row in split["workers"]["planner"].values()) == 2 and 1 <= split["loads"]["planner"] <= 2
    assert sum(row["beats"] for row in split["workers"]["image"].values()) == local["calls"]["image.draw"]


@pytest.mark.parametrize("load_ahead", ["on", "off"])
def test_worker_processes_load_the_first_stage_as_they_start(load_ahead: str) -> None:
    config = {**resolve_config("offline"), "load_ahead": load_ahead}
    workers = GPUProcesses(config, ["cpu"])
    workers.load_ahead("visual")
    try:
        assert workers._children[0].call("loaded_ahead", "image") is (load_ahead == "on")
    finally:
        workers.close()
    assert workers._children[0].process.exitcode == 0


def test_a_worker_process_that_dies_fails_only_its_beats(tmp_path: Path) -> None:
    from helpers import FaultyWorker

    config = resolve_config("offline")
    root = create_run("A cat who wants to be a judge", "explainer5", config, tmp_path / "runs")
    workers = GPUProcesses(config, ["cpu", "cpu"], worker=FaultyWorker)  # type: ignore[arg-type]
    try:
        with pytest.raises(StageError) as failure:
            run_stages(root, config, stages=("visual",), keep_going=True, workers=workers)
        dead = [child for child in workers._children if not child.process.is_alive()]
        assert len(dead) == 1 and dead[0].process.exitcode == 3
        # Beat 2's error comes back as it was raised; beat 3 (and at most the one other beat that shared its process)
        # fail naming the stopped worker; every other beat was drawn by the process left.
        failed = dict(part.split(": ", 1) for part in str(failure.value).removeprefix("visual: beats failed: ").split("; "))
        assert failed["2"] == "ValueError: beat 2 is cursed"
        assert failed["3"] == "the worker process for cpu stopped (exit code 3)"
        assert len(failed) <= 3 and set(failed.values()) <= {failed["2"], failed["3"]}
        artifacts = json.loads((root / "run.json").read_text())["artifacts"]
        made = {int(rel.split("_")[1]) for rel in artifacts if rel.startswith("beats/beat_")}
        beats = len(json.loads((root / "plan.json").read_text())["beats"])
        assert sorted([*made, *map(int, failed)]) == list(range(beats + 1))
        # The process left still works after the stage, and the dead one is not asked again.
        assert workers.loads()["image"] == 1
    finally:
        workers.close()
    assert not any(child.process.is_alive() for child in workers._children)
    # The next run (no workers) makes only what is missing.
    assert run_stages(root, config, stages=("visual",)).status == "ok"


def test_closing_worker_processes_now_fails_their_beats_at_once(tmp_path: Path) -> None:
    """Ctrl-C in a batch closes the workers `now`: a beat in the middle of a long call fails within seconds."""
    import threading
    import time

    from storyboard.produce import make_item

    from helpers import StuckWorker

    config = resolve_config("offline")
    root = create_run("A cat who wants to be a judge", "explainer5", config, tmp_path / "runs")
    workers = GPUProcesses(config, ["cpu"], worker=StuckWorker)  # type: ignore[arg-type]
    ctx = open_run(root, config)
    item = make_item(ctx, 1, root / "beats" / "beat_01.png", {"n": 1})
    outcome: list[BaseException] = []

    def draw() -> None:
        try:
            workers.make("image", ctx, item, tmp_path / "beat.tmp.png")
        except BaseException as error:  # noqa: BLE001 - kept for the assertion
            outcome.append(error)

    thread = threading.Thread(target=draw)
    thread.start()
    time.sleep(1.0)  # the beat is in the worker's long call
    started = time.monotonic()
    workers.close(now=True)
    thread.join(timeout=20)
    assert not thread.is_alive() and time.monotonic() - started < 15
    assert isinstance(outcome[0], StageError) and "the worker process for cpu stopped" in str(outcome[0])
    assert not workers._children[0].process.is_alive()


def test_worker_processes_free_their_models_at_once(tmp_path: Path) -> None:
    from helpers import MeetingWorker

    room = tmp_path / "room"
    room.mkdir()
    config = {**resolve_config("offline"), "meeting_dir": str(room), "meeting_size": 2}
    workers = GPUProcesses(config, ["cpu", "cpu"], worker=MeetingWorker)  # type: ignore[arg-type]
    try:
        workers.release()  # each process's release waits until the other's has begun: one after the other never meets
        assert len(list(room.iterdir())) == 2
    finally:
        workers.close(now=True)


def test_every_worker_process_gone_is_a_clear_stage_error(tmp_path: Path) -> None:
    config = resolve_config("offline")
    root = create_run("A cat who wants to be a judge", "explainer5", config, tmp_path / "runs")
    workers = GPUProcesses(config, ["cpu"])
    try:
        workers._children[0].process.kill()
        workers._children[0]._reader.join(timeout=30)
        with pytest.raises(StageError, match="no worker left for image: every device's worker has stopped") as failure:
            run_stages(root, config, stages=("visual",), keep_going=True, workers=workers)
        assert "1: no worker left" in str(failure.value)
        assert not any(rel.startswith("beats/beat_") for rel in json.loads((root / "run.json").read_text())["artifacts"])
    finally:
        workers.close()


def test_ray_and_gpus_together_is_refused() -> None:
    with pytest.raises(InputError, match="choose one"):
        make_workers({}, "auto", "0,1")
    with pytest.raises(InputError, match="give GPU indices"):
        make_workers({}, None, "first")
    with pytest.raises(InputError, match="gpu_workers: 'fork'"):
        make_workers({"gpu_workers": "fork"}, None, "0")


def test_releasing_the_planners_keeps_the_first_stage_loading_ahead() -> None:
    """After a batch's plans only the planners are freed: the image model loading ahead for the visual stage stays."""
    from collections import Counter

    from storyboard.context import BackendPool

    pool = BackendPool({**resolve_config("offline"), "load_ahead": "on"}, hold=True)
    with pool.loaded("planner", Counter()):
        pass
    pool.load_ahead([("image", None)])
    pool.release(("planner",))
    assert pool.has("image") and not pool.has("planner")
    pool.release()
    assert not pool.has("image")
