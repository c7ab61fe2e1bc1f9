"""What the diffusers video backends share, and LTX-Video: the lighter image-to-video alternative.

A clip backend loads its pipeline once per stage and animates each beat from its image (an sfx
beat from the previous clip's last frame). Two clips are in flight: one in the pipeline (every call on
the backend's one GPU thread) while the other's frames, scaled and quantised on the GPU, are copied to
the host on a stream of their own and encoded to H.264 (FLAC sound) in a child process, the encode starting
with the first VAE tile decoded.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PreflightError
from ..media import CLIP_AUDIO_RATE, Encoder, last_frame, load_audio, write_clip
from . import BackendBase, ClipRequest, register
from .diffusers_image import _accepts, pipeline_size
from .hf_common import (
    LoadedModel,
    device_of,
    dtype_of,
    free_memory,
    load_pipeline,
    missing,
    model_index,
    resolve_model,
    same_weights,
    watch,
)

MULTIPLE = 32  # LTX sizes are multiples of 32 (64 with a two-stage upscaler)


def frame_count(seconds: float, fps: float, temporal: int = 8) -> int:
    """Frames to generate for `seconds`: the smallest temporal*k + 1 that covers them."""
    needed = max(1, math.ceil(round(seconds * fps, 6)))
    return temporal * max(1, math.ceil((needed - 1) / temporal)) + 1


def retime_index(count: int, source_fps: float, fps: float) -> list[int]:
    """For `count` frames at `source_fps` shown at `fps`: the source frame of each shown one (nearest earlier frame)."""
    if source_fps == fps:
        return list(range(count))
    return [min(count - 1, math.floor(i * source_fps / fps)) for i in range(math.floor(count * fps / source_fps))]


def retime(frames: np.ndarray, source_fps: float, fps: float) -> np.ndarray:
    """Frames at `source_fps` shown at `fps` (nearest earlier frame), when the two differ."""
    return frames if source_fps == fps else frames[retime_index(len(frames), source_fps, fps)]


def _at_size(video: Any, size: tuple[int, int], chunk: int) -> Any:
    """(start, part) over (frames, 3, h, w) float frames in [0, 1]: `chunk` frames at a time, float32, scaled to `size`
    (width, height) and clamped, where the tensor is."""
    import torch.nn.functional as F

    width, height = size
    for start in range(0, video.shape[0], chunk):
        part = video[start:start + chunk].float()
        if part.shape[-2:] != (height, width):
            part = F.interpolate(part, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        yield start, part.clamp(0, 1)


def quantise(video: Any, size: tuple[int, int], chunk: int = 16) -> Any:
    """(frames, 3, h, w) float tensor in [0, 1] -> (frames, height, width, 3) uint8 tensor at `size`, scaled and
    quantised where the tensor is (the GPU): only bytes go to the host, a quarter of the float frames."""
    import torch

    width, height = size
    out = torch.empty((video.shape[0], height, width, 3), dtype=torch.uint8, device=video.device)
    for start, part in _at_size(video, size, chunk):
        out[start:start + chunk] = (part * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return out


# RGB in [0, 1] -> Y'CbCr as H.264 stores it by default: BT.601 coefficients, limited range (what libswscale's rgb24 ->
# yuv420p conversion gives, so a clip looks the same whichever side converts it).
_BT601 = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def yuv420(video: Any, size: tuple[int, int], chunk: int = 16) -> Any:
    """(frames, 3, h, w) float tensor in [0, 1] -> (frames, height * 3 // 2, width) uint8 planar YUV 4:2:0 at `size`
    (per frame the Y plane, then U and V at half size: the layout PyAV's `VideoFrame.from_ndarray(..., "yuv420p")`
    reads). Converting where the frames are (the GPU) halves the bytes sent to the host against RGB and spares the
    encoder its per-frame colour conversion, a large part of the encode that nothing hides when a clip is the last
    or only one. Width and height must be even; chroma is the mean of each 2x2 block."""
    import torch
    import torch.nn.functional as F

    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"YUV 4:2:0 needs an even width and height, not {width}x{height}")
    out = torch.empty((video.shape[0], height * 3 // 2, width), dtype=torch.uint8, device=video.device)
    weights = torch.tensor(_BT601, dtype=torch.float32, device=video.device)
    quarter = height * width // 4
    for start, part in _at_size(video, size, chunk):
        ycc = torch.einsum("kc,nchw->nkhw", weights, part)
        luma = ycc[:, 0] * 219 + 16
        chroma = F.avg_pool2d(ycc[:, 1:], 2) * 224 + 128  # (n, 2, height/2, width/2)
        end = start + part.shape[0]
        out[start:end, :height] = luma.round().clamp(0, 255).to(torch.uint8)
        planes = out[start:end, height:].view(end - start, 2 * quarter)  # a view: U then V of each frame
        planes.copy_(chroma.round().clamp(0, 255).to(torch.uint8).reshape(end - start, 2 * quarter))
    return out


def mark_ready(frames: Any) -> Any:
    """An event recorded after the kernels that make `frames` (None on the CPU)."""
    import torch

    if not frames.is_cuda:
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(frames.device))
    return event


def to_host(frames: Any, into: np.ndarray, ready: Any = None) -> None:
    """Copy uint8 `frames` into the host array `into`. On a GPU (`ready`: the event `mark_ready` recorded) the copy
    runs on a stream of its own once that event has passed, so the copy engine moves the bytes while the next clip's
    kernels run on the default stream."""
    import torch

    target = torch.from_numpy(into)
    if not frames.is_cuda:
        target.copy_(frames)
        return
    stream = torch.cuda.Stream(device=frames.device)
    stream.wait_event(ready)
    with torch.cuda.stream(stream):
        target.copy_(frames)  # into pageable memory: returns once the bytes are there


_NOT_GIVEN = object()


def temporal_tiles(vae: Any, emit: Any, z: Any, temb: Any, causal: Any = _NOT_GIVEN, return_dict: bool = True) -> Any:
    """An LTX / LTX-2 VAE's decode in temporal tiles (what `vae._temporal_tiled_decode` computes, the same operations in
    the same order, so the same frames) that hands each run of finished frames to `emit` as soon as it is final: a tile
    is final once it is blended with the one before, so the clip's encode starts while later tiles still decode.
    `emit(frames)`: decoder output (batch, channels, frames, h, w), in order, `num_sample_frames` in all."""
    import torch

    extra = {} if causal is _NOT_GIVEN else {"causal": causal}
    frames = z.shape[2]
    total = (frames - 1) * vae.temporal_compression_ratio + 1
    ratio_s, ratio_t = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    min_h, min_w = vae.tile_sample_min_height // ratio_s, vae.tile_sample_min_width // ratio_s
    tile_t, stride_t = vae.tile_sample_min_num_frames // ratio_t, vae.tile_sample_stride_num_frames // ratio_t
    stride, blend = vae.tile_sample_stride_num_frames, vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames
    kept, done, previous = [], 0, None
    for start in range(0, frames, stride_t):
        part = z[:, :, start:start + tile_t + 1]
        if vae.use_tiling and (part.shape[-1] > min_w or part.shape[-2] > min_h):
            tile = vae.tiled_decode(part, temb, return_dict=True, **extra).sample
        else:
            tile = vae.decoder(part, temb, **extra)
        if previous is None:
            final = tile[:, :, :stride + 1]
        else:
            tile = vae.blend_t(previous, tile[:, :, :-1], blend)
            final = tile[:, :, :stride]
        previous = tile
        final = final[:, :, :max(0, total - done)]
        if final.shape[2]:
            emit(final)
            done += final.shape[2]
        kept.append(final)
    from diffusers.models.autoencoders.vae import DecoderOutput

    video = torch.cat(kept, dim=2)
    return DecoderOutput(sample=video) if return_dict else (video,)


@contextlib.contextmanager
def streamed_decode(vae: Any, emit: Any) -> Any:
    """While inside: `vae` decodes in temporal tiles through `temporal_tiles`, handing finished frames to `emit`. A VAE
    without temporal tiles (Wan's; LTX's with tiling off or a clip of one tile) decodes as before and emits nothing."""
    if vae is None or not hasattr(vae, "_temporal_tiled_decode") or "_temporal_tiled_decode" in vars(vae):
        yield
        return
    vae._temporal_tiled_decode = functools.partial(temporal_tiles, vae, emit)
    try:
        yield
    finally:
        del vae._temporal_tiled_decode


class ClipBackend(BackendBase, LoadedModel):
    """A diffusers image-to-video backend: presets per quality, one pipeline call at a time, frames to an mp4."""

    name = "clip"
    default_model = ""
    presets: dict[str, dict[str, Any]] = {}
    sfx_from_previous = True
    multiple = MULTIPLE
    pipelines: tuple[str, ...] = ("pipe",)  # the attributes holding its pipelines, dropped on exit

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self._init_figures()
        self.model_ref = str(settings.get("model", self.default_model))
        self.preset_name = str(settings.get("quality", next(iter(self.presets))))
        if self.preset_name not in self.presets:
            raise PreflightError(f"video.quality: {self.preset_name!r}; choose {' or '.join(self.presets)}")
        self.pipe: Any = None
        self.workers = self.workers_setting("video", 2)
        self.gpu = threading.Lock()  # one pipeline call at a time
        self.turns: ThreadPoolExecutor | None = None  # the one thread every pipeline call of the stage runs on
        self._turns_made = threading.Lock()
        self.encoder = Encoder()  # clips are encoded in a child process beside the next pipeline call
        self.copies: ThreadPoolExecutor | None = None  # the one thread that copies frames to the host, run after run
        self.beside: ThreadPoolExecutor | None = None  # work a clip needs after its turn (a speech take's decode), done during it
        self.timeline: list[tuple[float, float, float]] = []  # per clip: its turn on the GPU (start, end), then the copy's seconds

    def gpu_gaps(self) -> dict[str, float]:
        """Over the clips so far: seconds of GPU turns, seconds copying frames to the host (after the turn, beside the
        next clip's), and seconds between turns (the GPU idle while clips were pending)."""
        turns = sorted(self.timeline)
        busy = sum(end - start for start, end, _ in turns)
        copy = sum(seconds for _, _, seconds in turns)
        idle = sum(max(0.0, turns[i][0] - turns[i - 1][1]) for i in range(1, len(turns)))
        return {"gpu_s": round(busy, 3), "convert_s": round(copy, 3), "gaps_s": round(idle, 3), "clips": len(turns)}

    def stage_figures(self) -> dict[str, Any]:
        return {**super().stage_figures(), **self.gpu_gaps()}

    def preset(self) -> dict[str, Any]:
        return {**self.presets[self.preset_name], **dict(self.settings.get("presets", {}).get(self.preset_name, {}))}

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_ref, "preset": self.preset(), "frame_rate": self.settings.get("frame_rate"),
                "fp8": bool(self.settings.get("fp8", False)), "fp8_vae": bool(self.settings.get("fp8_vae", False)),
                "vae_tiles": [bool(self.settings.get("vae_tiling", False)), int(self.settings.get("vae_temporal_tile_frames") or 0)],
                "x264": {k: v for k, v in self.x264().items() if k != "threads"}}  # threads change speed, not the picture

    def x264(self) -> dict[str, Any]:
        """The clip's encoder settings. A clip is an intermediate (the render stage encodes the short once more), so the
        default is near-lossless and fast: CRF 16 at `ultrafast` costs a third of `veryfast`'s time per clip and keeps
        the last clip's encode, the one the next clip cannot hide, short (BENCHMARKS.md)."""
        return {"crf": int(self.settings.get("crf", 16)), "preset": str(self.settings.get("preset", "ultrafast")),
                "threads": int(self.settings.get("encode_threads", 0))}

    def missing_models(self) -> list[str]:
        return missing({"video": self.model_ref})

    def __exit__(self, *exc: object) -> None:
        if self.turns is not None:
            for pool in (self.turns, self.copies, self.beside):
                pool.shutdown()
            self.turns = self.copies = self.beside = None
        self.encoder.close()
        dropped = watch(*(getattr(self, name) for name in self.pipelines))
        for name in self.pipelines:
            setattr(self, name, None)
        free_memory(dropped)

    def checkpoint_class(self) -> str:
        """The pipeline class the checkpoint names (its model_index.json)."""
        return str(model_index(resolve_model(self.model_ref, "video")).get("_class_name", ""))

    def _before_call(self) -> None:
        """Hook run under the GPU lock before each pipeline call."""

    def temporal(self) -> int:
        """Frames per latent frame: clips are temporal*k + 1 frames long."""
        return int(self.pipe.vae_temporal_compression_ratio)

    def _generate(self, request: ClipRequest, preset: dict[str, Any], image: Any, frames: int, fps: float, width: int,
                  height: int, ahead: Any = None) -> tuple[np.ndarray | None, int, Any]:
        raise NotImplementedError

    def _ahead_of_turn(self, request: ClipRequest, frames: int, fps: float) -> Any:
        """Hook run on the caller's thread before the clip's turn (while another clip may hold the GPU): what it
        returns reaches `_generate` as `ahead`."""
        return None

    def animate(self, request: ClipRequest, out: Path) -> None:
        from PIL import Image

        preset = self.preset()
        fps = float(self.settings.get("frame_rate") or request.fps)
        frames = frame_count(request.duration, fps, self.temporal())
        width, height = pipeline_size(request.width, request.height, preset.get("long_side"), self.multiple)
        if request.renderer == "sfx" and request.previous_clip is not None and request.previous_clip.is_file():
            image = last_frame(request.previous_clip).convert("RGB")
        else:
            with Image.open(request.image) as img:
                image = img.convert("RGB")
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        # Every call runs on one thread, whichever worker asks: with the two workers' threads taking turns on the
        # pipeline, a short's 11 calls took 71.9 s against 64.5 s from one thread, side by side on an H100 (BENCHMARKS.md).
        with self._turns_made:  # made on first use: the backend is entered again after __exit__ shut it down
            if self.turns is None:
                self.turns = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-gpu")
                self.copies = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-to-host")
                self.beside = ThreadPoolExecutor(2, thread_name_prefix=f"{self.name}-beside")
        ahead = self._ahead_of_turn(request, frames, fps)

        def turn() -> tuple[Any, ...]:
            with self.gpu:
                held = time.perf_counter()
                self._before_call()
                outgoing = self._outgoing(request, out, frames, fps)
                try:
                    with streamed_decode(getattr(self.pipe, "vae", None), outgoing.decoded):
                        audio, rate, video = self._generate(request, preset, image, frames, fps, width, height, ahead)
                    outgoing.add(video[outgoing.made:], outgoing.made)  # what the VAE did not hand over tile by tile
                except BaseException:
                    outgoing.abandon()
                    raise
                return held, time.perf_counter(), outgoing, audio, rate

        held, turned, outgoing, audio, rate = self.turns.submit(turn).result()
        # The turn ends once the last frames' kernels are queued: the next clip's call starts while they come to the
        # host and the encode (running since the first tile was decoded) finishes.
        try:
            copy_s = outgoing.finish(audio, rate)
        except BaseException:
            outgoing.abandon()
            raise
        self.timeline.append((held, turned, copy_s))
        outgoing.wait()

    def _outgoing(self, request: ClipRequest, out: Path, frames: int, fps: float) -> Outgoing:
        return Outgoing(self, request, out, frames, fps)


class Outgoing:
    """One clip's frames on their way from the GPU to the encoder's child, in runs as they are made (each VAE tile,
    or the whole clip at once): each run is retimed to the clip's frame rate, scaled and turned into planar YUV 4:2:0
    on the GPU (RGB for odd sizes), and copied into the shared memory the child encodes from, on a thread and a CUDA
    stream of their own, while the GPU goes on. The child starts when the clip's turn does and encodes each frame as
    soon as it is there; the sound follows once the call has made it (`finish`)."""

    def __init__(self, backend: ClipBackend, request: ClipRequest, out: Path, frames: int, fps: float) -> None:
        from ..media import LATE_SOUND

        self.backend, self.frames = backend, frames
        self.size = (request.width, request.height)
        self.even = not (request.width % 2 or request.height % 2)
        self.index = retime_index(frames, fps, request.fps)  # the source frame of each frame the clip shows
        width, height = self.size
        shape = (len(self.index), height * 3 // 2, width) if self.even else (len(self.index), height, width, 3)
        self.made = 0  # source frames handed over so far
        self.shown = 0  # the clip's frames queued for the host so far
        self.copies: list[Any] = []
        self.stream = backend.encoder.stream(shape, write_clip, out, request.fps, self.size, LATE_SOUND, 0, request.duration,
                                             **backend.x264())

    def decoded(self, video: Any) -> None:
        """A run of final VAE output (1, channels, frames, h, w) in [-1, 1], as the pipeline would post-process it."""
        if self.made + video.shape[2] > self.frames:  # not this clip's decode: leave it to the pipeline's output
            return
        self.add(self.backend.pipe.video_processor.postprocess_video(video, output_type="pt")[0], self.made)

    def add(self, video: Any, start: int) -> None:
        """Source frames [start, start + len(video)) as (frames, 3, h, w) in [0, 1] on their device."""
        end = start + video.shape[0]
        shown = self.shown
        while shown < len(self.index) and self.index[shown] < end:
            shown += 1
        self.made = end
        if shown == self.shown:
            return
        picks = [self.index[i] - start for i in range(self.shown, shown)]
        if picks == list(range(picks[0], picks[0] + len(picks))):  # the clip's own frame rate: a view, no copy
            video = video[picks[0]:picks[0] + len(picks)]
        else:
            import torch

            video = video.index_select(0, torch.tensor(picks, device=video.device))
        pixels = (yuv420 if self.even else quantise)(video, self.size)
        ready = mark_ready(pixels)
        first, self.shown = self.shown, shown
        self.copies.append(self.backend.copies.submit(self._to_host, pixels, ready, first, shown))

    def _to_host(self, pixels: Any, ready: Any, first: int, last: int) -> None:
        to_host(pixels, self.stream.frames[first:last], ready)
        self.stream.ready(last)

    def finish(self, audio: Any, rate: int) -> float:
        """Wait for the frames to reach the host and give the child the sound ((channels, samples), None, or a future
        of either): the seconds waited."""
        started = time.perf_counter()
        if hasattr(audio, "result"):
            audio = audio.result()
        for copy in self.copies:
            copy.result()
        self.copies.clear()
        if self.shown < len(self.index):
            raise RuntimeError(f"the clip has {self.shown} of its {len(self.index)} frames")
        self.stream.sound(audio, rate)
        return time.perf_counter() - started

    def wait(self) -> None:
        self.stream.wait()

    def abandon(self) -> None:
        for copy in self.copies:
            copy.exception()  # let every copy end before the block goes
        self.stream.abandon()


class SilentImageToVideo(ClipBackend):
    """An image-to-video model without sound (LTX-Video, Wan): every renderer is image-to-video; an a2v beat carries its
    TTS take but the mouth does not follow it (no audio conditioning), an sfx beat continues the previous clip
    silently. Settings: model, quality, presets {quality: steps, guidance_scale, long_side, ...pipeline arguments},
    frame_rate, device, dtype, fp8, fp8_vae, text_encoder_4bit, offload, vae_tiling, crf, preset (x264, default 16 and ultrafast)."""

    pipeline_class = ""
    family = ""  # the prefix of the checkpoint's pipeline class in model_index.json

    def __enter__(self) -> SilentImageToVideo:
        def load() -> None:
            import diffusers

            self.device = device_of(self.settings)
            self.dtype = dtype_of(self.settings, self.device)
            name = self.checkpoint_class()
            if not name.startswith(self.family) or name.startswith("LTX2"):
                raise PreflightError(f"video: {self.model_ref} is a {name} checkpoint, not one for the {self.name} backend")
            pipe = load_pipeline(self.settings, self.model_ref, "video", self.dtype, self.device)
            cls = getattr(diffusers, self.pipeline_class)
            self.pipe = pipe if isinstance(pipe, cls) else same_weights(cls, pipe)
            patch = getattr(self.pipe.transformer.config, "patch_size", 1)
            spatial = getattr(self.pipe, "vae_spatial_compression_ratio", None) or self.pipe.vae_scale_factor_spatial
            self.multiple = max(MULTIPLE if self.family == "LTX" else 16, spatial * (patch[-1] if isinstance(patch, (list, tuple)) else patch))

        self.timed_load(load)
        return self

    def temporal(self) -> int:
        return int(getattr(self.pipe, "vae_temporal_compression_ratio", None) or self.pipe.vae_scale_factor_temporal)

    def _ahead_of_turn(self, request: ClipRequest, frames: int, fps: float) -> Any:
        """An a2v beat's take (the clip carries it), decoded on a thread beside the turn: needed only after it."""
        if request.renderer == "a2v" and request.audio is not None:
            return self.beside.submit(load_audio, request.audio, CLIP_AUDIO_RATE, 2)
        return None

    def _generate(self, request: ClipRequest, preset: dict[str, Any], image: Any, frames: int, fps: float, width: int,
                  height: int, ahead: Any = None) -> tuple[np.ndarray | None, int, Any]:
        import torch

        call = {"image": image, "prompt": request.prompt, "negative_prompt": "", "num_frames": frames, "height": height, "width": width,
                "frame_rate": int(round(fps)), "num_inference_steps": int(preset["steps"]), "guidance_scale": float(preset["guidance_scale"]),
                "generator": torch.Generator("cpu").manual_seed(request.seed), "output_type": "pt",
                "max_sequence_length": int(self.settings.get("max_sequence_length", 128)),
                **{k: v for k, v in preset.items() if k not in {"steps", "guidance_scale", "long_side"}}}
        accepted = _accepts(self.pipe)
        result = self.pipe(**{k: v for k, v in call.items() if k in accepted})
        return ahead, CLIP_AUDIO_RATE, result.frames[0]  # the take's decode (a future) or None: silence


@register("video", "ltx-video")
class LTXVideo(SilentImageToVideo):
    """LTX-Video (0.9.x): lighter than LTX-2, without sound; 8k+1 frames, sizes in multiples of 32."""

    name = "ltx-video"
    default_model = "Lightricks/LTX-Video-0.9.8-13B-distilled"
    pipeline_class = "LTXImageToVideoPipeline"
    family = "LTX"
    presets = {
        "distilled": {"steps": 8, "guidance_scale": 1.0, "long_side": 768},
        "full": {"steps": 40, "guidance_scale": 3.0, "long_side": 768},
    }


@register("video", "wan")
class WanVideo(SilentImageToVideo):
    """Wan 2.x image-to-video (2.2 TI2V-5B by default): without sound; 4k+1 frames, sizes in multiples of the VAE
    stride times the patch (32 for the 5B model, 16 for 14B)."""

    name = "wan"
    default_model = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    pipeline_class = "WanImageToVideoPipeline"
    family = "Wan"
    presets = {
        "draft": {"steps": 20, "guidance_scale": 5.0, "long_side": 704},
        "full": {"steps": 50, "guidance_scale": 5.0, "long_side": 1280},
    }
