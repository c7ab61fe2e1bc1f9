"""ffmpeg filter graphs for the render: clip normalisation, concat, music ducking, loudness."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import StageError
from .ffmpeg import filter_value

SAMPLE_RATE = 48000


@dataclass(frozen=True)
class Piece:
    """One clip as the graph sees it: its length in the final and whether it has sound."""

    duration: float
    has_audio: bool


@dataclass(frozen=True)
class Music:
    """Background music: looped or trimmed to length, faded, ducked under speech."""

    path: Path
    volume_db: float = -16.0
    fade_s: float = 1.5


def video_chain(pieces: list[Piece], width: int, height: int, fps: int) -> list[str]:
    """Per clip: constant fps, scale + pad to the frame, square pixels, yuv420p, exact length."""
    parts = []
    for i, piece in enumerate(pieces):
        d = f"{piece.duration:.6f}"
        parts.append(
            f"[{i}:v]fps={fps},scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,format=yuv420p,"
            f"tpad=stop_mode=clone:stop_duration={d},trim=duration={d},setpts=PTS-STARTPTS[v{i}]"
        )
    parts.append("".join(f"[v{i}]" for i in range(len(pieces))) + f"concat=n={len(pieces)}:v=1:a=0[vc]")
    return parts


def audio_chain(pieces: list[Piece], music: Music | None) -> list[str]:
    """Per clip 48 kHz stereo padded (never cut) to its length, concatenated, music ducked under it → [mix]."""
    parts = []
    for i, piece in enumerate(pieces):
        d = f"{piece.duration:.6f}"
        source = f"[{i}:a]" if piece.has_audio else f"anullsrc=r={SAMPLE_RATE}:cl=stereo,"
        parts.append(
            f"{source}aresample={SAMPLE_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo,"
            f"apad=whole_dur={d},atrim=duration={d},asetpts=PTS-STARTPTS[a{i}]"
        )
    joined = "".join(f"[a{i}]" for i in range(len(pieces)))
    if music is None:
        parts.append(f"{joined}concat=n={len(pieces)}:v=0:a=1[mix]")
        return parts
    total = sum(p.duration for p in pieces)
    fade_out = max(0.0, total - music.fade_s)
    parts += [
        f"{joined}concat=n={len(pieces)}:v=0:a=1,asplit=2[speech][key]",
        f"[{len(pieces)}:a]aresample={SAMPLE_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo,"
        f"atrim=duration={total:.6f},asetpts=PTS-STARTPTS,afade=t=in:d={music.fade_s},"
        f"afade=t=out:st={fade_out:.3f}:d={music.fade_s},volume={music.volume_db}dB[bed]",
        "[bed][key]sidechaincompress=threshold=0.02:ratio=8:attack=15:release=350[ducked]",
        "[speech][ducked]amix=inputs=2:duration=first:normalize=0[mix]",
    ]
    return parts


def inputs_args(clips: list[str], music: Music | None) -> list[str]:
    """`-i` arguments: every clip, then the music looped forever (trimmed in the graph)."""
    args: list[str] = []
    for clip in clips:
        args += ["-i", clip]
    if music is not None:
        args += ["-stream_loop", "-1", "-i", str(music.path)]
    return args


def measure_graph(pieces: list[Piece], music: Music | None, lufs: float) -> str:
    """First loudness pass: the same audio mix, measured."""
    return ";".join([*audio_chain(pieces, music), f"[mix]loudnorm=I={lufs}:TP=-1.5:LRA=11:print_format=json[out]"])


def parse_loudnorm(stderr: str) -> dict[str, str]:
    """The JSON block loudnorm prints after a measuring pass."""
    match = re.search(r"\{[^{}]*\"input_i\"[^{}]*\}", stderr)
    if not match:
        raise StageError("render: loudness measurement printed no result:\n" + stderr[-1500:])
    return json.loads(match.group(0))


def final_graph(pieces: list[Piece], width: int, height: int, fps: int, subs: str, fontsdir: Path | None,
                music: Music | None, lufs: float, measured: dict[str, str] | None) -> str:
    """Second pass: normalised video with subtitles burned in; the mix normalised linearly to `lufs`."""
    sub_filter = "subtitles=filename=" + filter_value(subs)
    if fontsdir is not None:
        sub_filter += ":fontsdir=" + filter_value(str(fontsdir))
    loudnorm = f"loudnorm=I={lufs}:TP=-1.5:LRA=11"
    if measured is not None and measured.get("input_i") not in ("-inf", "inf"):
        loudnorm += (
            f":measured_I={measured['input_i']}:measured_TP={measured['input_tp']}:measured_LRA={measured['input_lra']}"
            f":measured_thresh={measured['input_thresh']}:offset={measured['target_offset']}:linear=true"
        )
    return ";".join([
        *video_chain(pieces, width, height, fps),
        f"[vc]{sub_filter}[vout]",
        *audio_chain(pieces, music),
        f"[mix]{loudnorm},aresample={SAMPLE_RATE}[aout]",
    ])
