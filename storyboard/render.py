"""Stage 5, render: normalise clips, burn subtitles and title, concatenate, loudness, H.264/AAC.

Each beat's picture is encoded once into a segment (render/seg_NN_<key>.mp4, keyed by its clip, length, subtitles,
title, fonts and encoder settings); the final joins the segments without re-encoding them and encodes only the
sound. Re-rendering after `--regen-beats 5,7` encodes two segments; a subtitle or title edit, the beats it touches.
Segments left to encode run side by side, each ffmpeg with its share of the cores.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import video as video_stage
from .context import RunContext, StageResult
from .errors import StageError
from .ffmpeg import run_ffmpeg
from .fonts import FontSet, find_fonts
from .graph import Loudness, Music, Piece, inputs_args, level_chain, measure_graph, mix_graph, parse_ebur128, segment_graph
from .keys import Inputs, content_key, file_hash
from .media import decode_audio, probe, speech_span
from .resources import assets_dir
from .rundir import atomic_path, write_text_atomic
from .subtitles import Cue, pack, time_chunks, write_ass, write_srt

log = logging.getLogger("storyboard")
STAGE_VERSION = 3
SEGMENT_VERSION = 1
SAMPLE_RATE = 48000
AAC_SLACK_S = 0.03


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
    conform: bool = True
    video_duration: float = 0.0


def segment_of(ctx: RunContext, n: int, start: float = 0.0) -> Segment:
    """Beat `n`'s clip as a segment of the final starting at `start`; StageError if its speech would be cut."""
    plan, fps = ctx.plan, ctx.plan.fps
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
    # AAC pads its last frame (~21-23 ms): that padding must not add a video frame; speech is exact.
    seconds = max(info.video_duration, (info.audio_duration or 0.0) - AAC_SLACK_S, speech[1] if speech else 0.0)
    seconds = math.ceil(round(seconds * fps, 6)) / fps
    conform = not (info.width == plan.width and info.height == plan.height and info.fps == fps
                   and info.pix_fmt == "yuv420p" and info.sar in (None, 0, 1))
    return Segment(n, clip, start, seconds, info.audio_duration is not None, speech, spoken[1] if spoken else "",
                   conform, info.video_duration)


def segments_of(ctx: RunContext) -> list[Segment]:
    """Each beat's clip laid out on the final's timeline; StageError if speech would be cut."""
    segments, start = [], 0.0
    for n in ctx.plan.beat_numbers:
        segments.append(segment_of(ctx, n, start))
        start += segments[-1].duration
    return segments


def fonts_of(ctx: RunContext) -> FontSet:
    """The fonts for the hook title and every spoken line's subtitle chunks (the plan alone decides them)."""
    text = ctx.plan.hook.title_overlay
    for n in ctx.plan.beat_numbers:
        spoken = video_stage.speaking(ctx, n)
        if spoken and spoken[1]:
            text += "".join(pack(spoken[1]))
    return find_fonts(text)


def cues_of(segments: list[Segment], local: bool = False) -> list[Cue]:
    """Subtitle cues of every spoken line, timed over its measured speech span (from each segment's start if `local`)."""
    cues: list[Cue] = []
    for seg in segments:
        if seg.speech and seg.line:
            start = 0.0 if local else seg.start
            cues += time_chunks(pack(seg.line), start + seg.speech[0], start + seg.speech[1])
    return cues


@dataclass(frozen=True)
class Picture:
    """What one segment file is made from: the beat's clip as the final shows it, with its subtitles and title."""

    seg: Segment
    cues: list[Cue]
    title: str
    path: Path

    @property
    def piece(self) -> Piece:
        return Piece(self.seg.duration, self.seg.has_audio, self.seg.conform, self.seg.video_duration)


def picture_of(ctx: RunContext, seg: Segment, clip_hash: str, fonts: FontSet) -> Picture:
    """A segment's picture and the cache file it lives in (its name holds the key of everything it shows)."""
    plan, settings = ctx.plan, ctx.config.get("render", {})
    cues = cues_of([seg], local=True)
    title = plan.hook.title_overlay if seg.number == plan.beat_numbers[0] else ""
    key = content_key({
        "segment": SEGMENT_VERSION, "clip": clip_hash, "piece": [seg.duration, seg.conform, seg.video_duration],
        "cues": [[round(c.start, 3), round(c.end, 3), c.text] for c in cues], "title": title,
        "fonts": [f.family for f in fonts.fonts], "size": [plan.width, plan.height], "fps": plan.fps,
        "preset": str(settings.get("preset", "veryfast")), "crf": str(settings.get("crf", 20)),
    })
    return Picture(seg, cues, title, ctx.rd.segment(seg.number, key))


class RenderAhead:
    """Encodes a beat's segment as soon as the video stage has published its clip (`RunContext.on_made`), on one
    thread with a quarter of the cores beside the stage, so the render that follows only joins them. Fonts are
    chosen at the first clip (a stage with nothing to make looks for none). A segment that fails here is only logged:
    the render encodes what is missing. `close()` waits for the encodes."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.threads = max(1, (os.cpu_count() or 2) // 4)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="render-ahead")
        self._futures: list[Future[None]] = []
        self._folders = contextlib.ExitStack()
        self._fonts: tuple[FontSet, Path] | None = None

    def __call__(self, rel: str, number: int) -> None:
        if rel.startswith("clips/"):
            self._futures.append(self._pool.submit(contextvars.copy_context().run, self._encode, number))

    def _encode(self, number: int) -> None:
        if self._fonts is None:
            fonts = fonts_of(self.ctx)
            self._fonts = fonts, self._folders.enter_context(font_folder(fonts))
        fonts, fontsdir = self._fonts
        seg = segment_of(self.ctx, number)
        picture = picture_of(self.ctx, seg, file_hash(seg.clip), fonts)
        if not picture.path.is_file():
            encode_picture(self.ctx, picture, fonts, fontsdir, self.threads)
            self.ctx.calls["render.segment"] += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        failed = [f.exception() for f in self._futures if f.exception() is not None]
        if failed:
            log.warning("render: %d segment(s) made ahead failed (first: %s); the render makes them", len(failed), failed[0])
        self._folders.close()


def encode_picture(ctx: RunContext, picture: Picture, fonts: FontSet, fontsdir: Path, threads: int) -> None:
    """Encode one segment: the clip normalised, subtitles and title burned in, H.264 without sound."""
    plan, settings = ctx.plan, ctx.config.get("render", {})
    with tempfile.TemporaryDirectory(prefix="storyboard-seg-") as folder, atomic_path(picture.path) as tmp:
        subs = Path(folder) / "subs.ass"
        subs.write_text(write_ass(picture.cues, picture.title, picture.seg.duration, plan.width, plan.height, fonts.family), encoding="utf-8")
        args = [
            "-i", ctx.rd.rel(picture.seg.clip), "-filter_complex", segment_graph(picture.piece, plan.width, plan.height, plan.fps, str(subs), fontsdir),
            "-map", "[vout]", "-an", "-r", str(plan.fps), "-fps_mode", "cfr", "-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p",
            "-preset", str(settings.get("preset", "veryfast")), "-crf", str(settings.get("crf", 20)), "-threads", str(threads), str(tmp.resolve()),  # ffmpeg runs in the run folder: never a relative path
        ]
        check_glyphs(run_ffmpeg(args, cwd=ctx.rd.root, what=f"render (beat {picture.seg.number})", loglevel="warning"))


def encode_pictures(ctx: RunContext, pictures: list[Picture], fonts: FontSet, fontsdir: Path) -> int:
    """Encode the segments not yet in the cache, side by side; how many were encoded."""
    todo = [p for p in pictures if not p.path.is_file()]
    if not todo:
        return 0
    cores = os.cpu_count() or 2
    workers = max(1, min(len(todo), cores // 2))
    with ThreadPoolExecutor(workers, thread_name_prefix="render") as pool:
        futures = [pool.submit(encode_picture, ctx, p, fonts, fontsdir, max(1, cores // workers)) for p in todo]
    for future in futures:
        future.result()  # the first failure, once every encode has ended
    ctx.calls["render.segment"] += len(todo)
    return len(todo)


def concat_list(paths: list[Path]) -> str:
    """An ffmpeg concat-demuxer list naming `paths` (quotes escaped)."""
    return "".join("file '" + str(path).replace("'", "'\\''") + "'\n" for path in paths)


def render_inputs(ctx: RunContext, segments: list[Segment], cues: list[Cue], fonts: FontSet) -> Inputs:
    """What final.mp4 is made from."""
    return {
        "stage": STAGE_VERSION,
        "clips": [file_hash(s.clip) for s in segments],
        "durations": [s.duration for s in segments],
        "cues": [[round(c.start, 3), round(c.end, 3), c.text] for c in cues],
        "title": ctx.plan.hook.title_overlay,
        "fonts": [f.family for f in fonts.fonts],
        "size": [ctx.plan.width, ctx.plan.height],
        "fps": ctx.plan.fps,
        "settings": ctx.config.get("render", {}),
    }


@contextlib.contextmanager
def font_folder(fonts: FontSet) -> Iterator[Path]:
    """One folder holding every chosen font, for libass's fontsdir (it falls back per glyph)."""
    with tempfile.TemporaryDirectory(prefix="storyboard-fonts-") as folder:
        for i, font in enumerate(fonts.fonts):
            (Path(folder) / f"{i:02d}{font.path.suffix}").symlink_to(font.path)
        yield Path(folder)


def loudness_level(ctx: RunContext, clips: list[str], pieces: list[Piece], music: Music | None, lufs: float, ceiling: float) -> tuple[str, float]:
    """Measure the mix (audio only, fast) and return the level chain that brings it to `lufs`.
    When the limiter has to catch peaks it costs loudness, so that case is measured once more."""

    def measure(level: str) -> Loudness:
        args = [*inputs_args(clips, music), "-filter_complex", measure_graph(pieces, music, level), "-map", "[out]", "-f", "null", "-"]
        return parse_ebur128(run_ffmpeg(args, cwd=ctx.rd.root, what="render (loudness)", loglevel="info"))

    key = content_key({"clips": [file_hash(ctx.rd.root / c) for c in clips], "pieces": [[p.duration, p.has_audio] for p in pieces],
                       "music": [str(music.path), file_hash(music.path), music.volume_db] if music else None, "lufs": lufs, "ceiling": ceiling})
    cached = ctx.manifest.data.get("loudness", {})
    if cached.get("key") == key:  # same sound as last render (e.g. only subtitles changed): no measuring
        return cached["level"], cached["gain"]
    first = measure("anull")
    gain = first.gain_to(lufs)
    level = level_chain(gain, first.true_peak, ceiling)
    if "alimiter" in level:
        gain += lufs - measure(level).integrated
        level = level_chain(gain, first.true_peak, ceiling)
    ctx.manifest.data["loudness"] = {"key": key, "level": level, "gain": gain}
    return level, gain


def music_of(ctx: RunContext) -> Music | None:
    """Background music from the profile: a path, or a file name in assets/bgm/; None when unset."""
    settings = ctx.config.get("render", {})
    name = settings.get("music")
    if not name:
        return None
    path = Path(str(name)).expanduser()
    if not path.is_absolute() and not path.is_file():
        path = assets_dir() / "bgm" / str(name)
    if not path.is_file():
        raise StageError(f"render.music: {name!r} not found (give a path or a file in {assets_dir() / 'bgm'})")
    return Music(path, float(settings.get("music_volume_db", -16.0)))


def check_glyphs(stderr: str) -> None:
    """libass says when no font had a glyph: fail naming the characters instead of drawing boxes."""
    missing = sorted({chr(int(code, 16)) for code in re.findall(r"failed to find any fallback with glyph 0x([0-9A-Fa-f]+)", stderr)})
    if missing:
        raise StageError(f"render: no font could draw {''.join(missing)!r}; add a font covering them to assets/fonts/")


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
    segments = segments_of(ctx)
    cues = cues_of(segments)
    fonts = fonts_of(ctx)
    # 2. Key: skip when final.mp4 is current.
    inputs = render_inputs(ctx, segments, cues, fonts)
    rel = ctx.rd.rel(ctx.rd.final)
    freshness = ctx.manifest.check(rel, ctx.rd.final, inputs)
    if not force and freshness.state == "fresh":
        return result
    if not force and freshness.state == "user":
        ctx.manifest.keep_user_file(rel, ctx.rd.final, inputs)
        log.warning("render: final.mp4 was replaced by hand; kept (use --regen-beats none to re-render)")
        return result
    ctx.ready_for_work()
    # 3. Subtitles are rewritten on every render; each beat's picture is encoded unless its segment is cached.
    hook_end = segments[0].duration
    write_text_atomic(ctx.rd.subs_ass, write_ass(cues, plan.hook.title_overlay, hook_end, plan.width, plan.height, fonts.family))
    write_text_atomic(ctx.rd.subs_srt, write_srt(cues))
    pictures = [picture_of(ctx, seg, clip_hash, fonts) for seg, clip_hash in zip(segments, inputs["clips"], strict=True)]
    pieces = [p.piece for p in pictures]
    clips = [ctx.rd.rel(seg.clip) for seg in segments]
    music = music_of(ctx)
    lufs = float(settings.get("loudness_lufs", -14))
    with ctx.reporter.stage("render", 1) as advance, font_folder(fonts) as fontsdir, atomic_path(ctx.rd.final) as tmp:
        # Pass 1 (audio only, fast): measure loudness so the final can normalise linearly.
        t0 = time.monotonic()
        level, gain = loudness_level(ctx, clips, pieces, music, lufs, float(settings.get("true_peak_db", -1.0)))
        t1 = time.monotonic()
        encoded = encode_pictures(ctx, pictures, fonts, fontsdir)
        t2 = time.monotonic()
        # The final: the segments joined as they are, the sound mixed, normalised and encoded.
        listing = fontsdir / "segments.txt"
        listing.write_text(concat_list([p.path.resolve() for p in pictures]), encoding="utf-8")
        args = [
            "-f", "concat", "-safe", "0", "-i", str(listing), *inputs_args(clips, music), "-filter_complex", mix_graph(pieces, music, level, 1),
            "-map", "0:v", "-map", "[aout]", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-ar", str(SAMPLE_RATE), "-ac", "2",
            "-movflags", "+faststart", tmp.name,
        ]

        def join() -> dict[str, Any]:
            ctx.calls["render.encode"] += 1
            run_ffmpeg(args, cwd=ctx.rd.root, what="render", loglevel="error")
            return check_final(tmp, segments, plan.width, plan.height, plan.fps)

        try:
            figures = join()
        except StageError as error:  # a cached segment damaged on disk: make them all again, once
            if encoded == len(pictures):
                raise
            log.warning("render: the cached segments did not make a good final (%s); encoding them again", str(error).splitlines()[0])
            for picture in pictures:
                picture.path.unlink(missing_ok=True)
            encoded = encode_pictures(ctx, pictures, fonts, fontsdir)
            figures = join()
        figures.update(measure_s=round(t1 - t0, 3), segments_s=round(t2 - t1, 3), join_s=round(time.monotonic() - t2, 3),
                       segments_encoded=encoded, segments_cached=len(pictures) - encoded)
        figures.update(gain_db=round(gain, 2))
        advance("final.mp4")
    keep = {p.path.name for p in pictures}
    for old in ctx.rd.segments_dir.glob("seg_*.mp4"):  # segments of earlier takes: nothing shows them any more
        if old.name not in keep:
            old.unlink(missing_ok=True)
    result.done.append(-1)
    result.seconds = time.monotonic() - started
    ctx.manifest.record(rel, ctx.rd.final, inputs, backend="ffmpeg", seconds=round(result.seconds, 3), **figures)
    ctx.manifest.record_stage("render", {"seconds": round(result.seconds, 3), **figures})
    return result
