"""Stage 5, render: normalise clips, concatenate, burn subtitles and title, loudness, H.264/AAC."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import video as video_stage
from .context import RunContext, StageResult
from .errors import StageError
from .ffmpeg import filter_value, run_ffmpeg
from .fonts import find_font
from .keys import Inputs, file_hash
from .media import decode_audio, probe, speech_span
from .rundir import atomic_path, write_text_atomic
from .subtitles import Cue, pack, time_chunks, write_ass, write_srt

log = logging.getLogger("storyboard")
STAGE_VERSION = 1
SAMPLE_RATE = 48000


@dataclass(frozen=True)
class Segment:
    """One beat's place in the final: its clip, length, and where its speech lies."""

    number: int
    clip: Path
    start: float
    duration: float
    has_audio: bool
    speech: tuple[float, float] | None  # seconds from the segment start
    line: str


def _segments(ctx: RunContext) -> list[Segment]:
    plan, fps = ctx.plan, ctx.plan.fps
    segments, start = [], 0.0
    for n in plan.beat_numbers:
        clip = ctx.rd.clip(n, plan.beat_type(n))
        if not clip.is_file():
            raise StageError(f"render: no clip for beat {n} ({ctx.rd.rel(clip)}); run `storyboard video` first")
        info = probe(clip)
        if info.video_duration is None:
            raise StageError(f"render: {ctx.rd.rel(clip)} has no video stream")
        spoken = video_stage.speaking(ctx, n)
        speech = None
        if spoken:
            wav = ctx.rd.audio(n)
            if not wav.is_file():
                raise StageError(f"render: beat {n} speaks but {ctx.rd.rel(wav)} is missing; run `storyboard video`")
            span = speech_span(decode_audio(wav), 16000)
            speech = span or (0.0, video_stage.wav_duration(wav))
            if info.audio_duration is None or info.audio_duration + 0.05 < speech[1]:
                raise StageError(
                    f"render: beat {n}'s clip carries {info.audio_duration or 0:.2f} s of audio but its speech lasts "
                    f"{speech[1]:.2f} s: the punchline would be cut; regenerate it with --regen-beats {n}"
                )
        seconds = max(info.video_duration, info.audio_duration or 0.0, speech[1] if speech else 0.0)
        seconds = math.ceil(round(seconds * fps, 6)) / fps
        segments.append(Segment(n, clip, start, seconds, info.audio_duration is not None, speech, spoken[1] if spoken else ""))
        start += seconds
    return segments


def _cues(segments: list[Segment]) -> list[Cue]:
    cues: list[Cue] = []
    for seg in segments:
        if seg.speech and seg.line:
            cues += time_chunks(pack(seg.line), seg.start + seg.speech[0], seg.start + seg.speech[1])
    return cues


def render_inputs(ctx: RunContext, segments: list[Segment], cues: list[Cue], font: str) -> Inputs:
    """What final.mp4 is made from."""
    return {
        "stage": STAGE_VERSION,
        "clips": [file_hash(s.clip) for s in segments],
        "durations": [s.duration for s in segments],
        "cues": [[round(c.start, 3), round(c.end, 3), c.text] for c in cues],
        "title": ctx.plan.hook.title_overlay,
        "font": font,
        "size": [ctx.plan.width, ctx.plan.height],
        "fps": ctx.plan.fps,
        "settings": ctx.config.get("render", {}),
    }


def filter_graph(segments: list[Segment], width: int, height: int, fps: int, subs: str, fontsdir: Path | None, lufs: float) -> str:
    """One pass: per clip scale/pad/fps/pixel format and 48 kHz stereo padded to length, then concat."""
    parts = []
    for i, seg in enumerate(segments):
        d = f"{seg.duration:.6f}"
        parts.append(
            f"[{i}:v]fps={fps},scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,format=yuv420p,"
            f"tpad=stop_mode=clone:stop_duration={d},trim=duration={d},setpts=PTS-STARTPTS[v{i}]"
        )
        source = f"[{i}:a]" if seg.has_audio else f"anullsrc=r={SAMPLE_RATE}:cl=stereo,"
        parts.append(
            f"{source}aresample={SAMPLE_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo,"
            f"apad=whole_dur={d},atrim=duration={d},asetpts=PTS-STARTPTS[a{i}]"
        )
    joined = "".join(f"[v{i}][a{i}]" for i in range(len(segments)))
    parts.append(f"{joined}concat=n={len(segments)}:v=1:a=1[vc][ac]")
    sub_filter = "subtitles=filename=" + filter_value(subs)
    if fontsdir is not None:
        sub_filter += ":fontsdir=" + filter_value(str(fontsdir))
    parts.append(f"[vc]{sub_filter}[vout]")
    parts.append(f"[ac]loudnorm=I={lufs}:TP=-1.5:LRA=11,aresample={SAMPLE_RATE}[aout]")
    return ";".join(parts)


def check_final(path: Path, segments: list[Segment], width: int, height: int, fps: int) -> dict[str, Any]:
    """The final is H.264/AAC, lengths agree, and every line is audible to its last word."""
    info = probe(path)
    total = sum(s.duration for s in segments)
    problems = []
    if info.video_codec != "h264" or info.pix_fmt != "yuv420p":
        problems.append(f"video is {info.video_codec}/{info.pix_fmt}, expected h264/yuv420p")
    if (info.width, info.height) != (width, height):
        problems.append(f"frame is {info.width}x{info.height}, expected {width}x{height}")
    if info.audio_codec != "aac" or info.channels != 2 or info.sample_rate != SAMPLE_RATE:
        problems.append(f"audio is {info.audio_codec} {info.channels} ch {info.sample_rate} Hz, expected AAC stereo 48 kHz")
    video_s, audio_s = info.video_duration or 0.0, info.audio_duration or 0.0
    if abs(video_s - audio_s) > 0.1:
        problems.append(f"audio lasts {audio_s:.2f} s but video {video_s:.2f} s")
    if abs(video_s - total) > 1.0 / fps + 0.02:
        problems.append(f"video lasts {video_s:.3f} s, the beats add up to {total:.3f} s")
    samples = decode_audio(path, 16000)
    for seg in segments:
        if seg.speech is None:
            continue
        end = seg.start + seg.speech[1]
        window = samples[int((end - 0.3) * 16000) : int(end * 16000)]
        level = 20 * np.log10(np.sqrt(np.mean(window**2)) + 1e-9) if window.size else -120.0
        if level < -50:
            problems.append(f"beat {seg.number}: the last word (at {end:.2f} s) is not audible in the final ({level:.0f} dBFS)")
    if problems:
        raise StageError(f"render: {path.name} failed its checks:\n  " + "\n  ".join(problems))
    return {"video_s": round(video_s, 3), "audio_s": round(audio_s, 3), "beats_s": round(total, 3)}


def render(ctx: RunContext, force: bool = False) -> StageResult:
    """Render final.mp4 when any clip, cue, title or setting changed (or when forced)."""
    result = StageResult("render")
    started = time.monotonic()
    plan, settings = ctx.plan, ctx.config.get("render", {})
    # 1. Check inputs and lay out the beats.
    segments = _segments(ctx)
    cues = _cues(segments)
    font = find_font(plan.hook.title_overlay + "".join(c.text for c in cues))
    # 2. Key: skip when final.mp4 is current.
    inputs = render_inputs(ctx, segments, cues, font.family)
    rel = ctx.rd.rel(ctx.rd.final)
    freshness = ctx.manifest.check(rel, ctx.rd.final, inputs)
    if not force and freshness.state == "fresh":
        return result
    if not force and freshness.state == "user":
        ctx.manifest.keep_user_file(rel, ctx.rd.final, inputs)
        log.warning("render: final.mp4 was replaced by hand; kept (use --regen-beats none to re-render)")
        return result
    # 3. Subtitles are rewritten on every render; then one encode does everything.
    hook_end = segments[0].duration
    write_text_atomic(ctx.rd.subs_ass, write_ass(cues, plan.hook.title_overlay, hook_end, plan.width, plan.height, font.family))
    write_text_atomic(ctx.rd.subs_srt, write_srt(cues))
    # libass finds system fonts through fontconfig; shipped and bundled ones through fontsdir.
    graph = filter_graph(
        segments, plan.width, plan.height, plan.fps, ctx.rd.subs_ass.name, font.path.parent, float(settings.get("loudness_lufs", -14)),
    )
    with ctx.reporter.stage("render", 1) as advance, atomic_path(ctx.rd.final) as tmp:
        args: list[str] = []
        for seg in segments:
            args += ["-i", ctx.rd.rel(seg.clip)]
        args += [
            "-filter_complex", graph, "-map", "[vout]", "-map", "[aout]", "-r", str(plan.fps), "-fps_mode", "cfr",
            "-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p", "-preset", str(settings.get("preset", "veryfast")),
            "-crf", str(settings.get("crf", 20)), "-c:a", "aac", "-b:a", "192k", "-ar", str(SAMPLE_RATE), "-ac", "2",
            "-movflags", "+faststart", tmp.name,
        ]
        ctx.calls["render.encode"] += 1
        run_ffmpeg(args, cwd=ctx.rd.root, what="render")
        figures = check_final(tmp, segments, plan.width, plan.height, plan.fps)
        advance("final.mp4")
    result.done.append(-1)
    result.seconds = time.monotonic() - started
    ctx.manifest.record(rel, ctx.rd.final, inputs, backend="ffmpeg", seconds=round(result.seconds, 3), **figures)
    ctx.manifest.record_stage("render", {"seconds": round(result.seconds, 3), **figures})
    return result
