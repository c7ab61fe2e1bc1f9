"""RELIABILITY.md cases 15-21: kills, interrupts, crashes, failing tools, full disks, missing pieces."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from storyboard.backends import BackendBase, ImageRequest, register
from storyboard.cli import app
from storyboard.media import probe
from storyboard.pipeline import run_stages
from storyboard.render import check_final
from storyboard.status import status

from helpers import changed, cli, edit_plan, media_hashes

STAGE_MARKS = ("visual", "judge", "video", "render")


def assert_whole(root: Path) -> None:
    """Every file under a final name is complete; no temp file is left once a run finished."""
    from PIL import Image

    for png in root.glob("beats/beat_*.png"):  # final names only (temp names start with a dot)
        with Image.open(png) as img:
            img.load()
    for media in [*root.glob("clips/clip_*.mp4"), *root.glob("audio/beat_*.wav"), root / "final.mp4"]:
        if media.is_file():
            assert probe(media).duration > 0, media
    json.loads((root / "run.json").read_text())


def start_run(root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "storyboard.cli", "run", "--dir", str(root), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_during(proc: subprocess.Popen[str], stage: str, delay: float, sig: int = signal.SIGKILL) -> bool:
    """Wait for the plain log line of `stage`, then send `sig` to the whole process group after `delay`."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if f" INFO {stage} " in line or f" INFO {stage}:" in line:
            time.sleep(delay)
            os.killpg(proc.pid, sig)
            proc.wait()
            return True
    proc.wait()
    return False


def final_checks(root: Path, config: dict) -> None:
    from storyboard.context import RunContext
    from storyboard.render import segments_of

    ctx = RunContext.open(root, config)
    check_final(root / "final.mp4", segments_of(ctx), ctx.plan.width, ctx.plan.height, ctx.plan.fps)


@pytest.mark.parametrize("stage", STAGE_MARKS)
def test_case_15_sigkill_in_each_stage_leaves_no_partial_file_and_reruns(run_copy: Path, config: dict, stage: str) -> None:
    proc = start_run(run_copy, "--regen-beats", "all")
    assert kill_during(proc, stage, 0.3), f"never reached {stage}"
    assert_whole(run_copy)
    result = cli("run", "--dir", str(run_copy))
    assert result.returncode == 0, result.stderr
    assert not [p for p in run_copy.rglob("*") if ".tmp-" in p.name]
    assert_whole(run_copy)
    final_checks(run_copy, config)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_case_15_sigkill_soak_20_random_kills_then_every_final_is_whole(run_copy: Path, config: dict) -> None:
    from PIL import Image

    rng = random.Random(15)
    mine = run_copy / "beats" / "beat_05_twist.png"
    Image.new("RGB", (512, 768), (20, 160, 90)).save(mine)  # the user's own file: never to change
    edit_plan(run_copy, 5, expression="the user's own words")
    mine_bytes, plan_bytes = mine.read_bytes(), (run_copy / "plan.json").read_bytes()
    assert cli("run", "--dir", str(run_copy)).returncode == 0
    for i in range(20):
        beats = rng.sample([0, 1, 2, 3, 4, 6, 7, 8, 9, 10], 4)  # never the user's beat 5
        proc = start_run(run_copy, "--regen-beats", ",".join(map(str, beats)))
        kill_during(proc, STAGE_MARKS[i % 4], rng.uniform(0.0, 0.6))
        assert_whole(run_copy)
        result = cli("run", "--dir", str(run_copy))
        assert result.returncode == 0, (i, result.stderr)
        assert_whole(run_copy)
        final_checks(run_copy, config)
        assert mine.read_bytes() == mine_bytes and (run_copy / "plan.json").read_bytes() == plan_bytes, i
    assert not [p for p in run_copy.rglob("*") if ".tmp-" in p.name]


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_case_16_ctrl_c_stops_children_releases_the_lock_keeps_finished_beats(run_copy: Path) -> None:
    # Ctrl-C as in a terminal: a suite started in the background (`.ci/run &`) hands its children SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-m", "storyboard.cli", "run", "--dir", str(run_copy), "--regen-beats", "all"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    for line in proc.stderr:
        if " INFO video 1/11 clip" in line:  # clips are being encoded by ffmpeg children now
            break
    children = _children_of(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "finished beats are kept" in err
    assert not [c for c in children if Path(f"/proc/{c}").exists() and "zombie" not in Path(f"/proc/{c}/status").read_text()]
    assert not (run_copy / ".lock.json").exists()
    assert not [p for p in run_copy.rglob("*") if ".tmp-" in p.name]
    before = media_hashes(run_copy)
    result = cli("run", "--dir", str(run_copy), "--json")
    assert result.returncode == 0
    summary = json.loads(result.stdout)
    assert summary["calls"].get("image.draw", 0) == 0 and summary["calls"].get("tts.speak", 0) == 0  # kept
    assert changed(before, media_hashes(run_copy))


def test_case_17_crash_between_file_and_manifest_is_adopted_never_the_reverse(run_copy: Path, config: dict) -> None:
    manifest = json.loads((run_copy / "run.json").read_text())
    del manifest["artifacts"]["audio/beat_02.wav"]  # the file was published, then the process died
    (run_copy / "run.json").write_text(json.dumps(manifest))
    (run_copy / "clips" / "clip_04_dejection.mp4").unlink()  # an entry whose file is gone
    summary = run_stages(run_copy, config)
    assert summary.calls.get("tts.speak", 0) == 0  # adopted, not redone
    assert summary.calls["video.animate"] == 1  # the missing clip is redone
    artifacts = json.loads((run_copy / "run.json").read_text())["artifacts"]
    assert all((run_copy / rel).is_file() for rel in artifacts)


def _fake_ffmpeg(folder: Path, body: str) -> Path:
    fake = folder / "ffmpeg"
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


@pytest.mark.parametrize(("body", "message"), [
    ("echo 'Conversion failed: the disk said no' >&2\nexit 187\n", "exited with code 187"),
    ("echo 'waiting forever' >&2\nexec sleep 60\n", "did not finish in 2 s"),
])
def test_case_18_ffmpeg_failing_or_hanging_shows_its_stderr_and_publishes_nothing(run_copy: Path, body: str, message: str) -> None:
    real = subprocess.run([sys.executable, "-c", "from storyboard.ffmpeg import ffmpeg_exe; print(ffmpeg_exe())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # preflight and probes use the real binary; only the render's own runs meet the broken one
    wrapper = _fake_ffmpeg(run_copy.parent, f'case "$*" in *-filters*|*-encoders*|*-version*) exec "{real}" "$@";; esac\n' + body)
    final = (run_copy / "final.mp4").read_bytes()
    env = {**os.environ, "STORYBOARD_FFMPEG": str(wrapper), "STORYBOARD_FFMPEG_TIMEOUT": "2"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "storyboard.cli", "run", "--dir", str(run_copy), "--regen-beats", "none"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert message in result.stderr and ("disk said no" in result.stderr or "waiting forever" in result.stderr)
    assert (run_copy / "final.mp4").read_bytes() == final
    assert time.monotonic() - started < 60
    assert not [p for p in run_copy.rglob("*") if ".tmp-" in p.name]


@register("image", "flaky")
class FlakyImages(BackendBase):
    """Fails beats 3 and 7 the way a busy server does, beat 9 the way a full disk does; draws the rest."""

    name = "flaky"

    def __init__(self, settings: dict[str, Any]) -> None:
        from storyboard.backends.card import CardRenderer

        super().__init__(settings)
        self.card = CardRenderer(settings)

    def draw(self, request: ImageRequest, out: Path) -> None:
        if request.number in (3, 7):
            raise ConnectionError("503 Service Unavailable after 3 tries")
        if request.number == 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.card.draw(request, out)


def test_case_19_keep_going_finishes_other_beats_and_lists_failures(run_copy: Path, config: dict) -> None:
    from storyboard.errors import StageError

    config = {**config, "image": {"backend": "flaky"}}
    with pytest.raises(StageError, match=r"3: ConnectionError: 503.*7: ConnectionError.*9: OSError.*No space left"):
        run_stages(run_copy, config, keep_going=True)
    cells = status(run_copy, config)["beats"]
    assert [n for n, row in cells.items() if row["image"]["state"] == "fresh"] == [0, 1, 2, 4, 5, 6, 8, 10]


def test_case_20_disk_full_is_a_clean_error_and_previous_outputs_stay(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import storyboard.manifest

    before = media_hashes(run_copy)
    manifest = (run_copy / "run.json").read_bytes()

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run_copy / "run.json"))

    monkeypatch.setattr(storyboard.manifest, "write_json_atomic", full)
    result = CliRunner().invoke(app, ["run", "--dir", str(run_copy), "--regen-beats", "2"])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert media_hashes(run_copy) == before and (run_copy / "run.json").read_bytes() == manifest


def test_case_21_missing_ffmpeg_voice_or_cuda_fails_in_preflight_before_any_work(run_copy: Path, tmp_path: Path) -> None:
    edit_plan(run_copy, 2, line="A changed line that would need a new voice take.")
    before = media_hashes(run_copy)
    env = {**os.environ, "STORYBOARD_FFMPEG": str(tmp_path / "no-ffmpeg-here")}
    result = subprocess.run([sys.executable, "-m", "storyboard.cli", "run", "--dir", str(run_copy)], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "preflight failed" in result.stderr and "ffmpeg" in result.stderr and "fix:" in result.stderr
    plan = json.loads((run_copy / "plan.json").read_text())
    plan["cast"]["lead"]["voice"] = "nobody-voice"
    (run_copy / "plan.json").write_text(json.dumps(plan))
    result = cli("run", "--dir", str(run_copy))
    assert result.returncode == 1 and "voice of lead" in result.stderr and "cast.lead.voice" in result.stderr
    plan["cast"]["lead"]["voice"] = "joe"
    (run_copy / "plan.json").write_text(json.dumps(plan))
    profile = tmp_path / "gpu.yaml"
    profile.write_text((Path(__file__).parents[1] / "storyboard" / "profiles" / "offline.yaml").read_text().replace("device: cpu", "device: cuda"))
    result = cli("run", "--dir", str(run_copy), "--profile", str(profile))
    assert result.returncode == 1 and "gpu" in result.stderr
    assert media_hashes(run_copy) == before
