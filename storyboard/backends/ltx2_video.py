"""Video on LTX-2 (diffusers), a joint audio-video model: one load per stage, three beat renderers.

- `i2v`: image-to-video from the beat image; the audio LTX-2 generates with it is dropped.
- `a2v`: the beat's speech drives the picture. diffusers has no audio-to-video entry point, so the
  speech is turned into a log-mel spectrogram, encoded with the LTX-2 audio VAE and held clean
  (sigma 0, no audio step) while the video denoises and cross-attends to it: the DFR pass's
  `freeze_audio`, run on the same loaded components. The clip carries the TTS file itself.
- `sfx`: image-to-video from the previous clip's last frame, the generated audio kept.

All prompts of the stage are encoded first and the text encoder is then dropped, so it never
sits in GPU memory beside the transformer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PreflightError, StageError
from ..media import CLIP_AUDIO_RATE, fit_length, load_audio
from . import ClipRequest, register
from .diffusers_video import ClipBackend, frame_count, retime  # noqa: F401 - frame_count, retime: part of this module's API
from .hf_common import (
    LOAD_LOCK,
    device_of,
    dtype_of,
    free_memory,
    in_use_gib,
    load_pipeline,
    missing,
    resolve_model,
    same_weights,
    to_device,
    watch,
)

# distilled: the distilled checkpoint's 8-sigma schedule without guidance; full: the base model, 30 steps with CFG.
PRESETS: dict[str, dict[str, Any]] = {
    "distilled": {"steps": 8, "guidance_scale": 1.0, "long_side": 768, "distilled_sigmas": True},
    "full": {"steps": 30, "guidance_scale": 3.0, "audio_guidance_scale": 7.0, "long_side": 768, "distilled_sigmas": False},
}
# Extra guidance passes (spatio-temporal skip, modality isolation) are off unless a preset turns them on.
PASSES_OFF = {"stg_scale": 0.0, "audio_stg_scale": 0.0, "modality_scale": 1.0, "audio_modality_scale": 1.0}
OWN_KEYS = {"steps", "guidance_scale", "audio_guidance_scale", "long_side", "distilled_sigmas"}
N_FFT = 1024  # the LTX-2 audio VAE's log-mel front end: 1024-point Hann STFT, Slaney mel, log(max(x, 1e-5))


def log_mel(samples: np.ndarray, rate: int, mel_bins: int, hop: int) -> Any:
    """(1, channels, time, mel_bins) log-mel spectrogram of (channels, n) samples, as the audio VAE reads it."""
    import torch
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=mel_bins, min_frequency=0.0,
                           max_frequency=rate / 2, sampling_rate=rate, norm="slaney", mel_scale="slaney")
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    magnitude = torch.stft(wave, N_FFT, hop_length=hop, win_length=N_FFT, window=torch.hann_window(N_FFT), center=True,
                           pad_mode="reflect", return_complex=True).abs()
    mel = torch.from_numpy(bank.T.astype(np.float32)) @ magnitude
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2).unsqueeze(0)


@register("video", "ltx2")
class LTX2Video(ClipBackend):
    """Settings: model (diffusers LTX-2 checkpoint id or path), quality (distilled|full), presets {quality: steps,
    guidance_scale, audio_guidance_scale, long_side, ...pipeline arguments}, frame_rate (model fps; default the
    run's), upsampler (a latent upsampler checkpoint: i2v and sfx clips are made at half size, upsampled 2x and
    refined), device, dtype, fp8 (transformer and, unless fp8_connectors is false, the text connectors), text_encoder_4bit,
    offload, vae_tiling, vae_temporal_tile_frames, fp8_vae, encode_prompts_first, crf and preset (x264, default 16 and ultrafast),
    overlap_speech (read by the video stage: load and encode prompts while the speech is made; default false)."""

    name = "ltx2"
    default_model = "Lightricks/LTX-2"
    presets = PRESETS
    pipelines = ("pipe", "a2v_pipe", "upsample_pipe")

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.a2v_pipe: Any = None
        self.upsample_pipe: Any = None
        self.embeds: dict[str, tuple[Any, Any]] = {}
        self.deferred = False
        self.upsampler_ref = settings.get("upsampler")
        if self.upsampler_ref:
            self.multiple = 64  # two-stage: half size first, so the full size is a multiple of 64

    # -- load once per stage -------------------------------------------------------------------------
    def __enter__(self) -> LTX2Video:
        def load() -> None:
            with LOAD_LOCK:
                from diffusers import LTX2DFRPipeline, LTX2ImageToVideoPipeline

            self.device = device_of(self.settings)
            self.dtype = dtype_of(self.settings, self.device)
            name = self.checkpoint_class()
            if not name.startswith("LTX2"):
                raise PreflightError(f"video: {self.model_ref} is a {name} checkpoint, not LTX-2")
            offload = str(self.settings.get("offload", "none"))
            # Prompts first: everything but the text encoder waits on the CPU until every prompt is encoded.
            self.deferred = bool(self.settings.get("encode_prompts_first", True)) and offload == "none" and self.device != "cpu"
            pipe = load_pipeline(self.settings, self.model_ref, "video", self.dtype, "cpu" if self.deferred else self.device)
            if self.settings.get("fp8") and self.settings.get("fp8_connectors", True):
                import torch  # the text connectors (1.4B parameters) are stored in fp8 too, computed in the run's dtype

                pipe.connectors.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=self.dtype)
            if self.deferred and not getattr(pipe.text_encoder, "is_loaded_in_4bit", False):  # an nf4 encoder already sits on the GPU
                to_device(pipe.text_encoder, self.device)
            with LOAD_LOCK:  # the same weights under the two entry points, no copy
                self.pipe = pipe if isinstance(pipe, LTX2ImageToVideoPipeline) else same_weights(LTX2ImageToVideoPipeline, pipe)
                self.a2v_pipe = same_weights(LTX2DFRPipeline, self.pipe)
            if self.upsampler_ref:
                self.upsample_pipe = self._load_upsampler(str(self.upsampler_ref))

        self.timed_load(load)
        return self

    def _load_upsampler(self, ref: str) -> Any:
        """The spatial latent upsampler (a model directory, or a checkpoint with a `latent_upsampler/` folder), paired
        with the loaded video VAE."""
        with LOAD_LOCK:
            from diffusers import LTX2LatentUpsamplePipeline
            from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

            path = resolve_model(ref, "video upsampler")
            if (path / "latent_upsampler").is_dir():
                path = path / "latent_upsampler"
            model = LTX2LatentUpsamplerModel.from_pretrained(path, torch_dtype=self.dtype)
        model.to("cpu" if self.deferred else self.device)
        pipe = LTX2LatentUpsamplePipeline(vae=self.pipe.vae, latent_upsampler=model)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def missing_models(self) -> list[str]:
        return missing({"video": self.model_ref, "video upsampler": self.upsampler_ref})

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), **({"upsampler": str(self.upsampler_ref)} if self.upsampler_ref else {})}

    def __exit__(self, *exc: object) -> None:
        self.embeds.clear()
        super().__exit__(*exc)

    # -- prompts -----------------------------------------------------------------------------------------
    def _guided(self, renderer: str) -> bool:
        return renderer != "a2v" and float(self.preset()["guidance_scale"]) > 1.0

    def _encode(self, prompt: str) -> tuple[Any, Any]:
        """(embeddings, mask) of a prompt, kept on the CPU (about 0.4 GB each at 1024 tokens)."""
        import torch

        if prompt not in self.embeds:
            if self.pipe.text_encoder is None:
                raise StageError("video: a prompt arrived after the text encoder was released (prepare() saw every prompt)")
            with torch.inference_mode():
                embeds, mask, _, _ = self.pipe.encode_prompt(prompt=prompt, do_classifier_free_guidance=False,
                                                             max_sequence_length=int(self.settings.get("max_sequence_length", 1024)),
                                                             device=self.pipe.text_encoder.device)
            # Not pinned: pinning costs ~0.4 s per prompt (cudaHostAlloc), more than each clip's ~60 ms pageable copy.
            self.embeds[prompt] = (embeds.cpu(), mask.cpu())
        return self.embeds[prompt]

    def _prompt_kwargs(self, prompt: str, guided: bool, ahead: dict[str, Any] | None = None) -> dict[str, Any]:
        """The pipeline's prompt arguments on the device: those `_ahead_of_turn` copied already, else copied now."""
        import torch

        if ahead is not None:
            stream = torch.cuda.current_stream(torch.device(self.device))
            stream.wait_event(ahead.pop("ready"))
            for tensor in ahead.values():
                tensor.record_stream(stream)  # made on the copy's stream, used on this one: not reused before that is done
            return ahead
        embeds, mask = self._encode(prompt)
        kwargs = {"prompt_embeds": embeds.to(self.device), "prompt_attention_mask": mask.to(self.device)}
        if guided:  # the negative prompt is empty, encoded once
            negative, negative_mask = self._encode("")
            kwargs.update(negative_prompt_embeds=negative.to(self.device), negative_prompt_attention_mask=negative_mask.to(self.device))
        return kwargs

    def _ahead_of_turn(self, request: ClipRequest, frames: int, fps: float) -> dict[str, Any]:
        """What a clip needs that the clip before, holding the GPU, need not wait for: a speech beat's take decoded,
        fitted to the clip and turned into the audio VAE's log-mel input (CPU work that, inside the turn, left the GPU
        idle), and the 48 kHz take the clip carries started on a thread beside the turn; on a GPU, the prompt
        embeddings (~0.4 GB) start their copy to the device on a stream of their own, so the copy engine moves them
        and the turn does not wait for it."""
        import torch

        ahead: dict[str, Any] = {"prompt": None}
        if request.renderer == "a2v" and request.audio is not None:
            # The clip carries the take itself (not the VAE's round trip), needed only once the turn is over: decoded
            # at the clip's rate on a thread of its own meanwhile.
            ahead["take"] = self.beside.submit(load_audio, request.audio, CLIP_AUDIO_RATE, 2)
            vae = self.a2v_pipe.audio_vae
            vae_rate = int(vae.config.sample_rate)
            speech = fit_length(load_audio(request.audio, vae_rate, 2), round(frames / fps * vae_rate))
            ahead["mel"] = log_mel(speech, vae_rate, vae.config.mel_bins, vae.config.mel_hop_length)
        if self.deferred or not str(self.device).startswith("cuda") or request.prompt not in self.embeds:
            return ahead
        guided = self._guided(request.renderer)
        copy = torch.cuda.Stream(device=torch.device(self.device))
        with torch.cuda.stream(copy):
            kwargs = self._prompt_kwargs(request.prompt, guided)
        ready = torch.cuda.Event()
        ready.record(copy)
        ahead["prompt"] = {**kwargs, "ready": ready}
        return ahead

    def prepare(self, prompts: list[str]) -> None:
        """Encode every prompt of the stage, then release the text encoder (it never shares the GPU with the transformer).
        Called again with prompts already encoded, it does nothing."""
        import time

        todo = [p for p in dict.fromkeys(["", *prompts]) if p not in self.embeds]  # "" is the negative prompt of guided presets
        if todo:
            started = time.monotonic()
            for prompt in todo:
                self._encode(prompt)
            self.figures["prompts_s"] = round(self.figures.get("prompts_s", 0.0) + time.monotonic() - started, 3)
        self._on_device(release_text_encoder=True)

    def _on_device(self, release_text_encoder: bool = False) -> None:
        """Move the deferred components to the GPU (once), without the text encoder when every prompt is encoded."""
        if not self.deferred:
            return
        import time

        started = time.monotonic()
        if release_text_encoder:
            dropped = watch(self.pipe.text_encoder)
            for p in (self.pipe, self.a2v_pipe):
                p.register_modules(text_encoder=None)
            free_memory(dropped)
        to_device(self.pipe, self.device)
        if self.upsample_pipe is not None:
            to_device(self.upsample_pipe.latent_upsampler, self.device)
        self.deferred = False
        self.figures["to_gpu_s"] = round(time.monotonic() - started, 3)
        self.figures["after_prompts_gib"] = in_use_gib()

    def warm(self) -> None:
        """One step of a tiny image-to-video call once the model is on its device (after prepare()): loads the GPU
        kernels before the first clip. Skipped while the components still wait on the CPU."""
        import torch
        from PIL import Image

        if self.deferred or "" not in self.embeds:
            return
        side = self.multiple * 2
        call = {"image": Image.new("RGB", (side, side), "gray"), "num_frames": self.temporal() + 1, "height": side, "width": side,
                "frame_rate": 24.0, "num_inference_steps": 1, "guidance_scale": 1.0, "audio_guidance_scale": 1.0,
                "generator": torch.Generator("cpu").manual_seed(0), "output_type": "pt", **PASSES_OFF, **self._prompt_kwargs("", False)}
        with self.gpu:
            self.pipe(**call)

    # -- animate -----------------------------------------------------------------------------------------
    def speech_latents(self, mel: Any) -> Any:
        """Audio-VAE latents (1, C, T, M) of speech's log-mel spectrogram (`log_mel` at the VAE's rate)."""
        import torch

        vae = self.a2v_pipe.audio_vae
        with torch.inference_mode():
            return vae.encode(mel.to(self.a2v_pipe._execution_device, vae.dtype)).latent_dist.mode()

    def _before_call(self) -> None:
        self._on_device()

    def _generate(self, request: ClipRequest, preset: dict[str, Any], image: Any, frames: int, fps: float, width: int,
                  height: int, ahead: dict[str, Any]) -> tuple[np.ndarray | None, int, Any]:
        """One pipeline call: (audio to keep or None, its rate, frames as a (frames, 3, h, w) tensor in [0, 1])."""
        import torch

        generator = torch.Generator("cpu").manual_seed(request.seed)
        extra = {**PASSES_OFF, **{k: v for k, v in preset.items() if k not in OWN_KEYS}}
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        sigmas = list(DISTILLED_SIGMA_VALUES) if preset["distilled_sigmas"] else None
        audio, rate = None, CLIP_AUDIO_RATE
        if "mel" in ahead:  # an a2v beat with its take
            from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

            if sigmas is None:  # the DFR pass runs without guidance: a plain schedule of `steps` sigmas for the base model
                sigmas = list(np.linspace(1.0, 1.0 / int(preset["steps"]), int(preset["steps"])))
            result = self.a2v_pipe(
                conditions=[LTX2VideoCondition(frames=image, index=0, strength=1.0)], audio_latents=self.speech_latents(ahead["mel"]),
                freeze_audio=True, generate_slots=False, sigmas=sigmas, num_frames=frames, height=height, width=width,
                frame_rate=fps, generator=generator, output_type="pt", **self._prompt_kwargs(request.prompt, False, ahead["prompt"]),
                **{k: v for k, v in extra.items() if k in {"decode_timestep", "decode_noise_scale"}})
            audio = ahead["take"]
        else:
            guided = self._guided(request.renderer)
            call: dict[str, Any] = {"image": image, "num_frames": frames, "height": height, "width": width, "frame_rate": fps,
                                    "num_inference_steps": int(preset["steps"]), "guidance_scale": float(preset["guidance_scale"]),
                                    "generator": generator, "output_type": "pt", **self._prompt_kwargs(request.prompt, guided, ahead["prompt"]),
                                    **extra}
            if sigmas is not None:
                call["sigmas"] = sigmas
            # The pipeline guides both streams when either scale is above 1: audio follows the video's choice.
            call["audio_guidance_scale"] = float(preset.get("audio_guidance_scale") or preset["guidance_scale"]) if guided else 1.0
            result = self._two_stage(call, image, width, height) if self.upsample_pipe is not None else self.pipe(**call)
            if request.renderer == "sfx":
                audio = np.asarray(result.audio[0].float().cpu().numpy() if hasattr(result.audio[0], "cpu") else result.audio[0], dtype=np.float32)
                rate = int(self.pipe.vocoder.config.output_sampling_rate)
        return audio, rate, result.frames[0]

    def _two_stage(self, call: dict[str, Any], image: Any, width: int, height: int) -> Any:
        """Half size, latents upsampled 2x, then a short refine at full size (stage 1's audio kept)."""
        from diffusers.pipelines.ltx2.utils import STAGE_2_DISTILLED_SIGMA_VALUES
        from PIL import Image

        half = {**call, "image": image.resize((width // 2, height // 2), Image.Resampling.LANCZOS), "width": width // 2,
                "height": height // 2, "output_type": "latent"}
        first = self.pipe(**half)
        upsampled = self.upsample_pipe(latents=first.frames, latents_normalized=False, output_type="latent").frames
        sigmas = list(STAGE_2_DISTILLED_SIGMA_VALUES)
        refine = {**call, "latents": upsampled, "audio_latents": first.audio, "sigmas": sigmas, "num_inference_steps": len(sigmas),
                  "noise_scale": sigmas[0], "guidance_scale": 1.0, "audio_guidance_scale": 1.0}
        for key in ("negative_prompt_embeds", "negative_prompt_attention_mask"):
            refine.pop(key, None)
        return self.pipe(**refine)
