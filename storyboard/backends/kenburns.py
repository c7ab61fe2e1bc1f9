"""Offline video: slow zoom/pan over the beat image for the clip's length, speech muxed."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from ..ffmpeg import filter_value, run_ffmpeg
from . import BackendBase, ClipRequest, register

SAMPLE_RATE = 48000


def motion_filter(request: ClipRequest, zoom: float) -> str:
    """A zoompan chain: zoom in or out around a seed-chosen anchor, one frame per input frame."""
    rng = random.Random(request.seed)
    frames = max(1, round(request.duration * request.fps))
    zoom_in = rng.random() < 0.5
    ax, ay = rng.choice([(0.5, 0.5), (0.35, 0.4), (0.65, 0.4), (0.5, 0.3)])
    progress = f"on/{frames}" if zoom_in else f"(1-on/{frames})"
    z = f"1+{zoom - 1:.4f}*{progress}"
    # Upscale first so zoompan's integer crop positions do not make the picture jitter.
    up_w, up_h = request.width * 2, request.height * 2
    return ",".join(
        [
            f"scale={up_w}:{up_h}:flags=bicubic",
            "zoompan=z=" + filter_value(z)
            + ":x=" + filter_value(f"(iw-iw/zoom)*{ax}")
            + ":y=" + filter_value(f"(ih-ih/zoom)*{ay}")
            + f":d=1:s={request.width}x{request.height}:fps={request.fps}",
            "setsar=1",
            "format=yuv420p",
        ]
    )


@register("video", "kenburns")
class KenBurns(BackendBase):
    """Draft animation without a model; sfx beats animate their own image."""

    name = "kenburns"
    sfx_from_previous = False

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.zoom = float(settings.get("zoom", 1.12))
        self.crf = int(settings.get("crf", 20))
        self.preset = str(settings.get("preset", "veryfast"))
        # zoompan runs on one core; clips are independent, so encode several at once.
        self.workers = self.workers_setting("video", os.cpu_count() or 1)

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "zoom": self.zoom, "crf": self.crf, "preset": self.preset}

    def animate(self, request: ClipRequest, out: Path) -> None:
        duration = f"{request.duration:.4f}"
        args = ["-loop", "1", "-framerate", str(request.fps), "-i", str(request.image)]
        if request.audio is not None:
            args += ["-i", str(request.audio)]
            audio_chain = f"[1:a]aresample={SAMPLE_RATE},apad[a]"
        else:
            args += ["-f", "lavfi", "-i", f"anullsrc=r={SAMPLE_RATE}:cl=stereo"]
            audio_chain = "[1:a]anull[a]"
        graph = f"[0:v]{motion_filter(request, self.zoom)}[v];{audio_chain}"
        args += [
            "-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-t", duration,
            "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            "-r", str(request.fps), "-c:a", "aac", "-b:a", "160k", "-ar", str(SAMPLE_RATE), "-ac", "2",
            str(out),
        ]
        run_ffmpeg(args, what=f"clip {request.number:02d}")
