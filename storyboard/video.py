"""Stage 4, video: speech for every speaking beat (hook narrator first), then one clip per beat."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .backends import ClipRequest, VoiceSpec
from .context import RunContext, StageResult
from .errors import StageError
from .keys import Inputs, file_hash
from .media import decode_audio, probe, speech_span, wav_duration
from .produce import Item, generate, local_backend, make_item, pending, producer
from .rundir import temp_path_for
from .speechqa import TakeCheck, best, check_take

log = logging.getLogger("storyboard")
STAGE_VERSION = 1


def speaking(ctx: RunContext, number: int) -> tuple[str, str] | None:
    """(cast id, line) voiced in beat `number`, or None for a silent beat."""
    if number == 0:
        return ctx.plan.hook.narrator, ctx.plan.hook.narrator_line
    beat = ctx.plan.beat(number)
    return (beat.speaker, beat.line) if beat.renderer == "a2v" and beat.speaker else None


def audio_inputs(ctx: RunContext, number: int) -> Inputs:
    """What a take of speech is made from."""
    who, line = speaking(ctx, number)  # type: ignore[misc]
    member = ctx.plan.cast[who]
    return {
        "stage": STAGE_VERSION,
        "backend": ctx.backend("tts").identity(),
        "line": line,
        "language": ctx.plan.language,
        "voice": {"voice": member.voice, "pitch": member.voice_pitch, "speed": member.voice_speed},
        "seed": ctx.seed(number),
        **({"qa": qa.identity()} if getattr(qa := ctx.backend("qa"), "enabled", False) else {}),
    }


def audio_items(ctx: RunContext) -> list[Item]:
    """Every speech file with its freshness."""
    return [make_item(ctx, n, ctx.rd.audio(n), audio_inputs(ctx, n)) for n in ctx.plan.beat_numbers if speaking(ctx, n)]


def speech_seconds(ctx: RunContext, number: int) -> float | None:
    """Measured length of beat `number`'s speech (None if silent or not voiced yet)."""
    path = ctx.rd.audio(number)
    if not speaking(ctx, number) or not path.is_file():
        return None
    return wav_duration(path)


def clip_seconds(ctx: RunContext, number: int) -> float:
    """max(planned, speech + tail), rounded up to a whole frame: speech is never cut."""
    render = ctx.config.get("render", {})
    planned = ctx.plan.hook.duration_sec if number == 0 else ctx.plan.beat(number).duration_sec
    tail = float(render.get("hook_tail_sec", 0.6) if number == 0 else render.get("speech_tail_sec", 0.4))
    speech = speech_seconds(ctx, number)
    seconds = max(planned, speech + tail) if speech is not None else planned
    return math.ceil(round(seconds * ctx.plan.fps, 6)) / ctx.plan.fps


def _hash_or_none(path: Path | None) -> str | None:
    return file_hash(path) if path is not None and path.is_file() else None


def clip_inputs(ctx: RunContext, number: int) -> Inputs:
    """What a clip is made from, upstream file hashes included."""
    plan = ctx.plan
    backend = ctx.backend("video")
    beat_type = plan.beat_type(number)
    renderer = "a2v" if number == 0 else plan.beat(number).renderer
    inputs: Inputs = {
        "stage": STAGE_VERSION,
        "backend": backend.identity(),
        "renderer": renderer,
        "image": _hash_or_none(ctx.rd.image(number, beat_type)),
        "audio": _hash_or_none(ctx.rd.audio(number)) if speaking(ctx, number) else None,
        "duration": clip_seconds(ctx, number),
        "fps": plan.fps,
        "size": [plan.width, plan.height],
        "seed": ctx.seed(number),
        "action": "" if number == 0 else plan.beat(number).action,
    }
    if renderer == "sfx" and backend.sfx_from_previous:
        inputs["previous_clip"] = _hash_or_none(ctx.rd.clip(number - 1, plan.beat_type(number - 1)))
    return inputs


def clip_items(ctx: RunContext) -> list[Item]:
    """Every clip with its freshness."""
    return [make_item(ctx, n, ctx.rd.clip(n, ctx.plan.beat_type(n)), clip_inputs(ctx, n)) for n in ctx.plan.beat_numbers]


def _voice(ctx: RunContext, backend: Any, item: Item, seed: int, out: Path) -> float:
    """One take of the line into `out`; its length (StageError if nothing audible came out)."""
    ctx.calls["tts.speak"] += 1
    backend.speak(item.inputs["line"], VoiceSpec(**item.inputs["voice"]), item.inputs["language"], seed, out)
    seconds = wav_duration(out)
    if seconds < 0.2 or speech_span(decode_audio(out), 16000) is None:
        raise StageError(f"TTS produced no audible speech ({seconds:.2f} s)")
    return seconds


def speak_one(ctx: RunContext, backend: Any, item: Item, tmp: Path, recogniser: Any = None) -> dict[str, Any]:
    """Voice a line; with speech QA, up to `max_takes` takes until one is the line without a long gap, keeping the best.
    The recogniser is the stage's (loaded here) unless one is given."""
    if "qa" not in item.inputs:
        return {"backend": backend.name, "seconds_of_speech": round(_voice(ctx, backend, item, item.inputs["seed"], tmp), 3)}
    with contextlib.nullcontext(recogniser) if recogniser is not None else ctx.loaded("qa") as qa:
        checks: list[TakeCheck] = []
        paths: list[Path] = []
        try:
            for take in range(max(1, qa.max_takes)):
                seed = item.inputs["seed"] if take == 0 else ctx.seed(item.number, 1000 + take)
                path = tmp if take == 0 else temp_path_for(item.path)
                paths.append(path)
                _voice(ctx, backend, item, seed, path)
                ctx.calls["qa.check"] += 1
                checks.append(check_take(qa, path, item.inputs["line"], item.inputs["language"], seed, qa.min_similarity, qa.max_gap_s))
                if checks[-1].ok:
                    break
            keep = best(checks)
            if keep:
                os.replace(paths[keep], tmp)
        finally:
            for path in paths[1:]:
                path.unlink(missing_ok=True)
    if not checks[keep].ok:
        log.warning("video: beat %d: no take passed speech QA in %d tries; kept take %d (similarity %.2f, gap %.2f s)",
                    item.number, len(checks), keep + 1, checks[keep].similarity, checks[keep].gap_s)
    return {"backend": backend.name, "seconds_of_speech": round(wav_duration(tmp), 3), "takes": [c.record() for c in checks],
            "kept_take": keep + 1, "qa_ok": checks[keep].ok}


def clip_prompt(ctx: RunContext, number: int) -> str:
    plan = ctx.plan
    return plan.hook.image_prompt if number == 0 else f"{plan.beat(number).image_prompt}. {plan.beat(number).action}"


def clips_after_speech(ctx: RunContext, speech: list[Item]) -> list[int]:
    """Beats whose clip the stage will make once `speech` is voiced: the clips pending now, those of re-voiced beats,
    and sfx clips chained (from the previous clip's last frame) to any of those."""
    numbers = {item.number for item in pending(ctx, clip_items(ctx))} | {item.number for item in speech}
    for n in ctx.plan.beat_numbers:  # ascending: a chain of sfx beats follows its head
        if n - 1 in numbers and n > 0 and ctx.plan.beat(n).renderer == "sfx" and ctx.backend("video").sfx_from_previous:
            numbers.add(n)
    return sorted(numbers)


def load_video_early(ctx: RunContext, speech: list[Item], stage: contextlib.ExitStack) -> Future[float] | None:
    """Load the video model and encode the prompts of the clips to come on a thread while the speech is voiced (the
    GPU has room: speech models are small, and the clips' peak comes after); the model stays open until `stage`
    closes. Off unless `video.overlap_speech` is true: with the weights in the page cache the two contend for the GPU
    and gain nothing (BENCHMARKS.md); it is meant for a load that waits on the disk. None too when the backend has
    nothing to prepare or its work goes to workers. The future gives the seconds the load and prompts took."""
    backend = ctx.backend("video")
    if not hasattr(backend, "prepare") or not ctx.config.get("video", {}).get("overlap_speech", False):
        return None
    if ctx.workers is not None and "video" in ctx.workers.distributes:
        return None
    prompts = [clip_prompt(ctx, n) for n in clips_after_speech(ctx, speech)]
    opened = contextlib.ExitStack()

    def warm() -> float:
        started = time.monotonic()
        opened.enter_context(ctx.loaded("video")).prepare(prompts)
        return time.monotonic() - started

    pool = ThreadPoolExecutor(1, thread_name_prefix="video-load")
    future = pool.submit(contextvars.copy_context().run, warm)
    pool.shutdown(wait=False)  # the thread ends when warm() returns

    def close() -> None:  # once the thread is done; its error was raised where it was awaited (or the speech failed first)
        with contextlib.suppress(Exception):
            future.result()
        opened.close()

    stage.callback(close)
    return future


def clip_request(ctx: RunContext, item: Item) -> ClipRequest:
    """What the video backend is asked for one clip."""
    plan, n = ctx.plan, item.number
    return ClipRequest(
        number=n, renderer=item.inputs["renderer"], image=ctx.rd.image(n, plan.beat_type(n)),
        audio=ctx.rd.audio(n) if item.inputs["audio"] else None, duration=item.inputs["duration"], width=plan.width,
        height=plan.height, fps=plan.fps, seed=item.inputs["seed"], prompt=clip_prompt(ctx, n),
        previous_clip=ctx.rd.clip(n - 1, plan.beat_type(n - 1)) if "previous_clip" in item.inputs else None,
    )


def animate_one(ctx: RunContext, backend: Any, item: Item, tmp: Path) -> dict[str, Any]:
    request = clip_request(ctx, item)
    if request.image is None or not request.image.is_file():
        raise StageError(f"no image for beat {item.number}; run `storyboard visual` first")
    ctx.calls["video.animate"] += 1
    backend.animate(request, tmp)
    check_clip(tmp, request)
    return {"backend": backend.name}


def check_clip(path: Path, request: ClipRequest) -> None:
    """The clip has video of the requested length and audio that holds all the speech."""
    info = probe(path)
    if info.video_duration is None:
        raise StageError("clip has no video stream")
    if info.video_duration + 1.5 / request.fps < request.duration:
        raise StageError(f"clip is {info.video_duration:.2f} s, requested {request.duration:.2f} s")
    if request.audio is not None:
        speech = wav_duration(request.audio)
        if info.audio_duration is None or info.audio_duration + 0.05 < speech:
            raise StageError(f"clip audio {info.audio_duration or 0:.2f} s would cut {speech:.2f} s of speech")


def voice_ahead(ctx: RunContext, tts: Any, recogniser: Any) -> None:
    """Voice the pending lines before the video stage (on the load-ahead thread, while the judge works: speech depends
    on the plan only), with voices loaded ahead. A failure leaves the line pending: the stage voices it again."""
    todo = pending(ctx, audio_items(ctx))
    if not todo:
        return
    result = StageResult("video")
    ctx.calls["tts.load"] += 1  # loaded ahead for this work: the video stage will not load them
    if recogniser is not None:
        ctx.calls["qa.load"] += 1
    try:
        generate(ctx, result, todo, lambda item, tmp: speak_one(ctx, tts, item, tmp, recogniser), lambda item: f"voice {item.number:02d} (ahead)")
    finally:
        ctx.made_ahead.update(item.rel for item in todo if item.number in result.done)


def voice_pending(ctx: RunContext, result: StageResult, figures: dict[str, Any], stage: contextlib.ExitStack) -> Future[float] | None:
    """Speech first: its measured length sets each clip's length. The video model may load meanwhile (its future).
    Lines voiced ahead in this run (during the judge stage) are not voiced again, even when forced."""
    assert ctx.pool is not None
    ctx.pool.wait_work("speech")
    todo = [item for item in pending(ctx, audio_items(ctx)) if item.rel not in ctx.made_ahead]
    if not todo:
        return None
    ctx.ready_for_work()
    load_started = time.monotonic()
    qa_on = getattr(ctx.backend("qa"), "enabled", False)
    with local_backend(ctx, "tts") as tts, (ctx.loaded("qa") if qa_on and tts is not None else contextlib.nullcontext()):
        figures["tts_load_s"] = round(time.monotonic() - load_started, 3)  # the recogniser (speech QA) loads with it, once
        early = load_video_early(ctx, todo, stage)
        make, workers = producer(ctx, "tts", speak_one, tts)
        generate(ctx, result, todo, make, lambda item: f"voice {item.number:02d}", workers=workers)
    return early


def animate_pending(ctx: RunContext, result: StageResult, figures: dict[str, Any], early: Future[float] | None) -> None:
    """Clips, whose keys include the speech and image hashes; one load of the video model (the early one if any)."""
    todo = pending(ctx, clip_items(ctx))
    if not todo:
        return
    ctx.ready_for_work()
    load_started = time.monotonic()
    if early is not None:
        figures["video_load_overlapped_s"] = round(early.result(), 3)  # load + prompts, beside the speech
    with local_backend(ctx, "video") as backend:  # the early load stays open: no second load
        figures["video_load_s"] = round(time.monotonic() - load_started, 3)  # what the clips waited for
        make, workers = producer(ctx, "video", animate_one, backend)
        if backend is not None and hasattr(backend, "prepare"):  # e.g. encode every prompt once, then free the text encoder
            backend.prepare([clip_prompt(ctx, item.number) for item in todo])
        # An sfx clip that starts from the previous clip's last frame waits for that clip, and its key is taken
        # only then (it holds the previous clip's hash): rounds of clips whose predecessor is not pending.
        tried: set[int] = set()
        while todo:
            waiting = {item.number for item in todo}
            ready = [item for item in todo if "previous_clip" not in item.inputs or item.number - 1 not in waiting]
            generate(ctx, result, ready, make, lambda item: f"clip {item.number:02d}", workers=workers)
            tried |= {item.number for item in ready}
            todo = [item for item in pending(ctx, clip_items(ctx)) if item.number not in tried]
        if backend is not None and hasattr(backend, "stage_figures"):
            figures.update(backend.stage_figures())


def video(ctx: RunContext) -> StageResult:
    """Voice every stale speaking beat, then animate every stale clip; one load per model."""
    result = StageResult("video")
    started = time.monotonic()
    figures: dict[str, Any] = {}
    with contextlib.ExitStack() as stage:
        early = voice_pending(ctx, result, figures, stage)
        animate_pending(ctx, result, figures, early)
    result.loads = ctx.calls["tts.load"] + ctx.calls["video.load"]
    if result.done or result.failed:
        result.seconds = time.monotonic() - started
        ctx.manifest.record_stage("video", {**figures, "seconds": round(result.seconds, 3), "beats": sorted(set(result.done))})
    return result
