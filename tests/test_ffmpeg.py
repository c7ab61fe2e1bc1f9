import stat
import time
from pathlib import Path

import pytest

from storyboard.errors import StageError
from storyboard.ffmpeg import filter_value, run_ffmpeg
from storyboard.media import probe


def _frame(path: Path) -> bytes:
    import av

    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="gray").tobytes()


def test_filter_value_escapes_text_exactly(tmp_path: Path) -> None:
    text = "it's 100% ok: a\\b, [c]; d"
    (tmp_path / "t.txt").write_text(text)
    outputs = []
    for i, source in enumerate(["text=" + filter_value(text), "textfile=t.txt"]):
        out = tmp_path / f"o{i}.mp4"
        graph = f"color=c=black:s=320x64:d=0.2,drawtext={source}:expansion=none:fontcolor=white:fontsize=20:x=4:y=20"
        run_ffmpeg(["-f", "lavfi", "-i", graph, "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", out.name], cwd=tmp_path)
        outputs.append(_frame(out))
    assert outputs[0] == outputs[1]  # the escaped text draws exactly what the file holds
    assert len(set(outputs[0])) > 1  # and something was drawn


def test_filter_value_escapes_hostile_paths(tmp_path: Path) -> None:
    folder = tmp_path / "it's 100%: a,b [c];d"
    folder.mkdir()
    subs = folder / "sub's: 50%.srt"
    subs.write_text("1\n00:00:00,000 --> 00:00:01,000\nHello\n")
    out = tmp_path / "o.mp4"
    graph = "color=c=black:s=128x128:d=0.5,subtitles=filename=" + filter_value(str(subs))
    run_ffmpeg(["-f", "lavfi", "-i", graph, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)])
    assert probe(out).video_duration == pytest.approx(0.5, abs=0.05)


def test_nonzero_exit_shows_stderr_tail(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"exited with code .*\n.*(No such file|does-not-exist)"):
        run_ffmpeg(["-i", str(tmp_path / "does-not-exist.mp4"), str(tmp_path / "x.mp4")], what="test")


def test_hanging_ffmpeg_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'stuck on purpose' >&2\nexec sleep 60\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("STORYBOARD_FFMPEG", str(fake))
    started = time.monotonic()
    with pytest.raises(StageError, match=r"did not finish in 1 s.*\n.*stuck on purpose"):
        run_ffmpeg(["-version"], timeout=1)
    assert time.monotonic() - started < 10
