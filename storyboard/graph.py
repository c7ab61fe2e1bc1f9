"""ffmpeg filter graphs for the render: clip normalisation, concat, music ducking, loudness."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import StageError
from .ffmpeg import filter_value

SAMPLE_RATE = 48000


@dataclass(frozen=True)
class Piece:
    """One clip as the graph sees it: its length in the final, whether it has sound, and
    which normalisation it needs (a clip already in the run's format skips the costly filters)."""

    duration: float
    has_audio: bool
    conform: bool = True  # scale/pad/fps/pixel format needed
    video_duration: float = 0.0


@dataclass(frozen=True)
class Music:
    """Background music: looped or trimmed to length, faded, ducked under speech."""

    path: Path
    volume_db: float = -16.0
    fade_s: float = 1.5


def piece_chain(piece: Piece, width: int, height: int, fps: int) -> str:
    """One clip's video filters: constant fps, scale + pad to the frame, square pixels, yuv420p, exact length."""
    d = f"{piece.duration:.6f}"
    chain = []
    if piece.conform:
        chain += [f"fps={fps}", f"scale={width}:{height}:force_original_aspect_ratio=decrease",
                  f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2", "setsar=1", "format=yuv420p"]
    if piece.conform or piece.duration > piece.video_duration + 1e-3:
        chain.append(f"tpad=stop_mode=clone:stop_duration={d}")  # hold the last frame while sound goes on
    chain += [f"trim=duration={d}", "setpts=PTS-STARTPTS"]
    return ",".join(chain)


def audio_chain(pieces: list[Piece], music: Music | None, first: int = 0) -> list[str]:
    """Per clip 48 kHz stereo padded (never cut) to its length, concatenated, music ducked under it → [mix]. The clips
    are inputs `first`, `first` + 1, ..., the music the input after them."""
    parts = []
    for i, piece in enumerate(pieces):
        d = f"{piece.duration:.6f}"
        source = f"[{first + i}:a]" if piece.has_audio else f"anullsrc=r={SAMPLE_RATE}:cl=stereo,"
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
        f"[{first + len(pieces)}:a]aresample={SAMPLE_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo,"
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


def measure_graph(pieces: list[Piece], music: Music | None, level: str = "anull") -> str:
    """A measuring pass: the same audio mix (after `level`), through the EBU R128 meter (no resampling to 192 kHz)."""
    return ";".join([*audio_chain(pieces, music), f"[mix]{level},ebur128=peak=true:framelog=quiet[out]"])


def level_chain(gain_db: float, peak_db: float, ceiling_db: float) -> str:
    """Linear gain, plus a limiter only where that gain would push peaks over `ceiling_db`."""
    level = f"volume={gain_db:.2f}dB"
    if peak_db + gain_db > ceiling_db:
        level += f",alimiter=limit={10 ** (ceiling_db / 20):.4f}:level=false:latency=1"
    return level


@dataclass(frozen=True)
class Loudness:
    """Integrated loudness (LUFS) and true peak (dBFS) of the mix."""

    integrated: float
    true_peak: float

    def gain_to(self, target: float) -> float:
        """The linear gain that brings the mix to `target` (0 for silence)."""
        return 0.0 if self.integrated <= -70 else target - self.integrated


def parse_ebur128(stderr: str) -> Loudness:
    """The summary the ebur128 filter prints when it ends."""
    integrated = re.findall(r"I:\s+(-?[\d.]+|-inf) LUFS", stderr)
    peak = re.findall(r"Peak:\s+(-?[\d.]+|-inf) dBFS", stderr)
    if not integrated or not peak:
        raise StageError("render: the loudness measurement printed no summary:\n" + stderr[-1500:])
    return Loudness(float(integrated[-1]), float(peak[-1]))


def segment_graph(piece: Piece, width: int, height: int, fps: int, subs: str, fontsdir: Path | None) -> str:
    """One beat's picture for the final: its clip normalised, its subtitles (and, for the hook, the title) burned in."""
    sub_filter = "subtitles=filename=" + filter_value(subs)
    if fontsdir is not None:
        sub_filter += ":fontsdir=" + filter_value(str(fontsdir))
    return f"[0:v]{piece_chain(piece, width, height, fps)},{sub_filter}[vout]"


def mix_graph(pieces: list[Piece], music: Music | None, level: str, first: int) -> str:
    """The final's sound: the clips' audio (inputs from `first` on) mixed, through `level_chain`."""
    return ";".join([*audio_chain(pieces, music, first), f"[mix]{level},aresample={SAMPLE_RATE}[aout]"])
