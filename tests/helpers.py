"""Helpers shared by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from storyboard.context import RunContext
from storyboard.keys import file_hash
from storyboard.rundir import RunDir


def media_hashes(root: Path) -> dict[str, str]:
    """Hash of every media artifact in a run directory, by relative path."""
    files = [*root.glob("beats/beat_*.png"), *root.glob("audio/beat_*.wav"), *root.glob("clips/clip_*.mp4"), root / "final.mp4"]
    return {p.relative_to(root).as_posix(): file_hash(p) for p in files if p.is_file()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def edit_plan(root: Path, number: int, **fields: object) -> None:
    """Edit beat `number` of plan.json by hand, as a user would."""
    path = root / "plan.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    target = data["hook"] if number == 0 else data["beats"][number - 1]
    target.update(fields)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `storyboard` command in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "storyboard.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def make_clip(path: Path, *, fps: str, size: str, seconds: float, audio: tuple[int, int, float, int] | None) -> None:
    """A tiny real clip: test pattern video; optional sine audio (rate, channels, seconds, frequency)."""
    from storyboard.ffmpeg import run_ffmpeg

    args = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d={seconds}"]
    if audio is not None:
        rate, channels, audio_s, freq = audio
        args += ["-f", "lavfi", "-i", f"sine=f={freq}:sample_rate={rate}:d={audio_s}", "-ac", str(channels), "-c:a", "aac"]
    path.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg([*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(path)])


def make_wav(path: Path, seconds: float, freq: int = 1000, rate: int = 48000) -> None:
    """A tone standing in for speech (loud from start to end)."""
    from storyboard.ffmpeg import run_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg(["-f", "lavfi", "-i", f"sine=f={freq}:sample_rate={rate}:d={seconds}", "-ac", "2", str(path)])


def synthetic_plan(beats: list[dict], hook_s: float = 1.0, line: str = "Hello there.") -> dict:
    """A small valid plan: a narrated hook and the given beats."""
    return {
        "idea": "test", "language": "en", "format": "drama10", "title": "Test title", "setting": "a room",
        "cast": {"narrator": {"name": "Narrator", "appearance": "voice"}, "lead": {"name": "Mia", "appearance": "red hair"}},
        "width": 256, "height": 384, "fps": 24,
        "hook": {"title_overlay": "Test title", "narrator_line": line, "image_prompt": "Mia", "duration_sec": hook_s},
        "beats": beats,
    }


def silent_beat(kind: str = "i2v", seconds: float = 1.0) -> dict:
    return {"type": "pause", "renderer": kind, "image_prompt": "a room", "duration_sec": seconds}


HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from storyboard.rundir import RunLock\n"
    "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n"
)


def mixed_run(root: Path, config: dict, *, hook_audio_s: float = 2.0, music: Path | None = None) -> RunContext:
    """A run of hand-made clips in mixed fps, sizes, rates and channels, one without audio."""
    rd = RunDir(root)
    plan = synthetic_plan([silent_beat("i2v", 1.5), silent_beat("i2v", 1.2), {**silent_beat("sfx", 2.0), "type": "gavel"}])
    rd.plan.parent.mkdir(parents=True, exist_ok=True)
    rd.plan.write_text(json.dumps(plan))
    make_wav(rd.audio(0), 1.5)  # the narrator's speech
    make_clip(rd.clip(0, "hook"), fps="24", size="320x480", seconds=2.0, audio=(44100, 2, hook_audio_s, 1000))
    make_clip(rd.clip(1, "pause"), fps="25", size="640x360", seconds=1.5, audio=(22050, 1, 1.5, 300))
    make_clip(rd.clip(2, "pause"), fps="30000/1001", size="480x480", seconds=1.2, audio=None)
    make_clip(rd.clip(3, "gavel"), fps="24", size="256x384", seconds=2.0, audio=(48000, 2, 2.5, 200))  # sound outlasts picture
    if music is not None:
        config = {**config, "render": {**config["render"], "music": str(music)}}
    return RunContext.open(root, config)




class LoopbackServer:
    """A JSON HTTP server on 127.0.0.1 for API-client tests: subclasses answer in `answer()`."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                status, body, headers = server.answer(self.command, self.path, dict(self.headers), raw)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except BrokenPipeError:  # the client gave up (timeout tests)
                    pass

            do_GET = do_POST = _serve  # noqa: N815 - http.server's names

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict, dict[str, str]]:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()


class GeminiServer(LoopbackServer):
    """POST /v1beta/models/{model}:generateContent answered from a queue of (status, text, delay, finish)."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str, float, str]] = []
        self.requests: list[dict[str, Any]] = []
        super().__init__()
        self.url = self.root

    def answer(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict, dict[str, str]]:
        self.requests.append({"path": path, "key": headers.get("x-goog-api-key"), "body": json.loads(raw)})
        status, text, delay, finish = self.answers.pop(0)
        time.sleep(delay)
        if status != 200:
            return status, {"error": {"code": status, "message": text, "status": "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"}}, {}
        return 200, {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish, "index": 0}],
                     "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 20, "thoughtsTokenCount": 5}}, {}


class FaultyWorker:
    """A worker process's worker (`GPUProcesses(worker=...)`) that fails beat 2 with an error and dies on beat 3, the
    way a CUDA fault or the OOM killer ends a process; every other beat is made as usual."""

    def __new__(cls, config: dict[str, Any]) -> Any:
        from storyboard.distribute import StageWorker

        class Faulty(StageWorker):
            def make(self, capability: str, root: str, number: int, *args: Any) -> Any:
                if number == 2:
                    raise ValueError("beat 2 is cursed")
                if number == 3:
                    time.sleep(0.2)  # the other beat in flight on this process is cut off with it
                    os._exit(3)
                return super().make(capability, root, number, *args)

        return Faulty(config)


class StuckWorker:
    """A worker process's worker whose every beat takes a minute (a long GPU call)."""

    def __new__(cls, config: dict[str, Any]) -> Any:
        from storyboard.distribute import StageWorker

        class Stuck(StageWorker):
            def make(self, *args: Any) -> Any:
                time.sleep(60)

        return Stuck(config)


class MeetingWorker:
    """A worker process's worker whose `release` returns only once every process of the set is in its own `release`
    (each leaves a file named after its process id in `meeting_dir`, a setting), or raises after 20 s: passes only if the
    parent asks all of them at once."""

    def __new__(cls, config: dict[str, Any]) -> Any:
        from storyboard.distribute import StageWorker

        class Meeting(StageWorker):
            def release(self, capabilities: tuple[str, ...] | None = None) -> None:
                room = Path(self.config["meeting_dir"])
                (room / str(os.getpid())).touch()
                deadline = time.monotonic() + 20
                while len(list(room.iterdir())) < int(self.config["meeting_size"]):
                    if time.monotonic() > deadline:
                        raise TimeoutError("released alone: the other processes were not asked meanwhile")
                    time.sleep(0.05)
                super().release(capabilities)

        return Meeting(config)


class PeerSharingWorker:
    """A worker process's worker that treats its CPU as a GPU for the hand-over of loaded weights between processes
    (`hf_common.Siblings` offers, which the product makes only between CUDA devices): the same offers, adopt and
    copy, with the tensors shared through shared memory instead of CUDA IPC."""

    def __new__(cls, config: dict[str, Any]) -> Any:
        from storyboard.backends import hf_common
        from storyboard.distribute import StageWorker

        real = hf_common._sibling_key

        def any_device(path: Any, settings: Any, dtype: Any, device: str, shared: Any) -> Any:
            return real(path, settings, dtype, "cuda:0", shared)  # the key leaves the device out; cuda:0 only passes the check

        hf_common._sibling_key = any_device
        return StageWorker(config)
