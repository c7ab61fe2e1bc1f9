"""Running ffmpeg: one binary, argument lists only, a timeout, and the end of stderr on failure.

ffmpeg-python (unmaintained since 2019) does not escape commas inside filter arguments, so
expressions such as `min(a,b)` break; we build argument lists here and escape filter values
with `filter_value`. Probing and decoding use PyAV.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from .errors import PreflightError, StageError

DEFAULT_TIMEOUT_S = 600.0
_STDERR_TAIL = 2000
_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()


def stop_all() -> None:
    """Kill every ffmpeg this process started (Ctrl-C reaches only the main thread)."""
    with _running_lock:
        for proc in _running:
            proc.kill()


def ffmpeg_exe() -> str:
    """$STORYBOARD_FFMPEG, else the imageio-ffmpeg binary, else `ffmpeg` on PATH."""
    env = os.environ.get("STORYBOARD_FFMPEG")
    if env:
        return env
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found:
            return found
    raise PreflightError("ffmpeg not found: `pip install imageio-ffmpeg` or install ffmpeg on PATH")


def filter_value(value: str) -> str:
    """Escape a value for a filter option inside a filtergraph (both quoting levels)."""
    quoted = "'" + value.replace("'", "'\\''") + "'"
    return "".join("\\" + ch if ch in "\\'[],;" else ch for ch in quoted)


def run_ffmpeg(args: list[str], *, cwd: Path | None = None, timeout: float | None = None, what: str = "ffmpeg", loglevel: str = "error") -> str:
    """Run ffmpeg with `args`; return its stderr; raise StageError with the end of stderr if it fails or hangs.

    The time limit is `timeout`, else $STORYBOARD_FFMPEG_TIMEOUT, else 600 s."""
    if timeout is None:
        timeout = float(os.environ.get("STORYBOARD_FFMPEG_TIMEOUT", DEFAULT_TIMEOUT_S))
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", loglevel, *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with _running_lock:
        _running.add(proc)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        tail = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
        raise StageError(f"{what}: ffmpeg did not finish in {timeout:.0f} s and was stopped\n{tail}") from None
    except BaseException:
        # Ctrl-C or any error here: never leave ffmpeg running behind us.
        proc.kill()
        proc.wait()
        raise
    finally:
        with _running_lock:
            _running.discard(proc)
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace")[-_STDERR_TAIL:].strip()
        raise StageError(f"{what}: ffmpeg exited with code {proc.returncode}:\n{tail}")
    return err.decode("utf-8", "replace")
