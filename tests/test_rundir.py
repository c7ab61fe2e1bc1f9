import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from storyboard.errors import LockedError
from storyboard.rundir import RunDir, RunLock, atomic_path, run_name, temp_path_for, write_json_atomic

from helpers import HOLD_LOCK


def test_file_names_are_zero_padded_ascii(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    assert rd.image(0, "hook").name == "beat_00_hook.png"
    assert rd.clip(7, "climax").name == "clip_07_climax.mp4"
    assert rd.audio(5).name == "beat_05.wav"


def test_run_names_are_stable_and_distinct() -> None:
    day = date(2026, 11, 22)
    a = run_name("A cat who wants to be a judge", day)
    assert a == run_name("A cat who wants to be a judge", day)
    assert a.startswith("20261122-a-cat-who-wants-to-be-a-judge-")
    assert a != run_name("A cat who wants to be a judge!", day)
    assert run_name("猫の裁判官", day).startswith("20261122-short-")


def test_atomic_path_never_leaves_a_partial_file(tmp_path: Path) -> None:
    final = tmp_path / "beats" / "beat_01_setup.png"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("backend died")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []
    with atomic_path(final) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == final.parent
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole"


def test_temp_names_never_collide(tmp_path: Path) -> None:
    names = {temp_path_for(tmp_path / "final.mp4") for _ in range(1000)}
    assert len(names) == 1000


def test_clean_temporaries_removes_only_leftovers(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.ensure()
    leftover = temp_path_for(rd.clip(3, "refusal"))
    leftover.write_bytes(b"x")
    keep = rd.clip(2, "ask")
    keep.write_bytes(b"y")
    assert rd.clean_temporaries() == [leftover]
    assert keep.exists() and not leftover.exists()


def test_second_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"pid {holder.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_write_json_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": "ü"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": "ü"}
    time.sleep(0)
