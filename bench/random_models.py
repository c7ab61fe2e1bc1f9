"""Real-architecture models with random weights, built in-process and saved with `save_pretrained`.

Used by the GPU benchmarks (full-size configs: true speed and memory) and by the tests (tiny
configs: the same loaders on the CPU). Nothing here downloads: tokenizers are trained on a few
sentences, configs are written out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "A cat who wants to be a judge. The court is in session. Order! Objection, your honour.",
    '{"idea": "x", "beats": [{"number": 1, "line": "Hello", "duration_sec": 3.5}], "ok": true, "reason": "fine"}',
    "YES the image matches. NO the hands look wrong. setting: a courtroom. expression: smug.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ ,.;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`|",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]


def tokenizer(vocab_size: int = 400, extra: list[str] | tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained on CORPUS (and `extra` texts), with a chat template and the Qwen special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*CORPUS, *extra], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


# Flux-dev (12B) as in diffusers' conversion script and the model's config; "tiny" keeps the wiring.
FLUX = {
    "full": {
        "transformer": {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                        "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
                        "axes_dims_rope": [16, 56, 56]},
        "clip": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
                 "hidden_act": "quick_gelu"},
        "t5": {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "feed_forward_proj": "gated-gelu"},
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32,
                "shift_factor": 0.1159, "scaling_factor": 0.3611},
        "t5_tokens": 512,
    },
    "tiny": {
        "transformer": {"patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [4, 4, 8]},
        "clip": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1, "projection_dim": 32},
        "t5": {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 1, "num_heads": 4},
        "vae": {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4,
                "shift_factor": 0.0609, "scaling_factor": 1.5035},
        "t5_tokens": 512,
    },
}


def _random(cls: Any, config: Any, device: str, dtype: Any) -> Any:
    """Build `cls(config)` with random weights straight on `device` (no slow CPU init for billions of parameters)."""
    import torch

    if device == "cpu":
        torch.manual_seed(0)
        return cls(config) if not isinstance(config, dict) else cls(**config)
    with torch.device("meta"):
        model = cls(config) if not isinstance(config, dict) else cls(**config)
    model = model.to(dtype).to_empty(device=device)  # the dtype first: a 14B model in float32 would not fit
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.02, generator=generator)
    return model


def flux(path: Path, size: str = "tiny", pipeline: str = "FluxPipeline", device: str = "cpu") -> Path:
    """A Flux-architecture pipeline with random weights saved under `path` (`pipeline`: FluxPipeline or
    FluxKontextPipeline, the same architecture used as an edit model)."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    spec = FLUX[size]
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    tok = tokenizer()
    clip_tok = tokenizer()
    clip_tok.model_max_length = 77
    tok.model_max_length = spec["t5_tokens"]
    transformer = _random(FluxTransformer2DModel, spec["transformer"], device, dtype)
    clip = _random(CLIPTextModel, CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                                                 pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id, **spec["clip"]), device, dtype)
    t5 = _random(T5EncoderModel, T5Config(vocab_size=len(tok), decoder_start_token_id=0, **spec["t5"]), device, dtype)
    vae = _random(AutoencoderKL, {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
                                  "up_block_types": ("UpDecoderBlock2D",) * 4, "use_quant_conv": False, "use_post_quant_conv": False,
                                  **spec["vae"]}, device, dtype)
    cls = getattr(diffusers, pipeline)
    pipe = cls(transformer=transformer, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=tok, vae=vae,
               scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15))
    pipe.save_pretrained(path, max_shard_size="20GB")
    return path


# LTX-2 (19B: 48 layers, 4096-wide video / 2048-wide audio streams) as in diffusers' model defaults; "tiny"
# keeps the wiring (a VAE with 8x spatial and temporal compression, a 2-layer Gemma 3).
LTX2 = {
    "full": {
        "transformer": {}, "audio_vae": {}, "vocoder": {}, "connectors": {},
        "vae": {"decoder_causal": False, "spatial_compression_ratio": 32, "temporal_compression_ratio": 8},  # as the conversion script sets
        # Gemma-3-12B's width and depth (what the connectors read: 3840 x 49 hidden states); its attention and MLP
        # are shrunk, so the random checkpoint fits the benchmark disk. Prompts are encoded before the clips are timed.
        "gemma": {"hidden_size": 3840, "num_hidden_layers": 48, "intermediate_size": 256, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "head_dim": 64},
    },
    "tiny": {
        "transformer": {"in_channels": 4, "out_channels": 4, "num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16,
                        "audio_in_channels": 4, "audio_out_channels": 4, "audio_num_attention_heads": 2, "audio_attention_head_dim": 4,
                        "audio_cross_attention_dim": 8, "num_layers": 2, "caption_channels": 16, "rope_double_precision": False,
                        "rope_type": "split", "vae_scale_factors": (8, 8, 8)},
        "vae": {"latent_channels": 4, "block_out_channels": (8, 8, 8), "decoder_block_out_channels": (8, 8, 8), "layers_per_block": (1, 1, 1),
                "decoder_layers_per_block": (1, 1, 1, 1), "spatio_temporal_scaling": (True,) * 3, "decoder_spatio_temporal_scaling": (True,) * 3,
                "decoder_inject_noise": (False,) * 4, "downsample_type": ("spatiotemporal",) * 3, "upsample_residual": (False,) * 3,
                "upsample_factor": (1,) * 3, "patch_size": 1, "decoder_causal": False},
        "audio_vae": {"base_channels": 4, "ch_mult": (1, 1, 1), "num_res_blocks": 1, "resolution": 32, "latent_channels": 2, "mel_bins": 8},
        "vocoder": {"in_channels": 16, "hidden_channels": 32, "upsample_kernel_sizes": [4, 4], "upsample_factors": [2, 2],
                    "resnet_kernel_sizes": [3], "resnet_dilations": [[1, 3, 5]], "output_sampling_rate": 16000},
        "connectors": {"caption_channels": 16, "text_proj_in_factor": 3, "video_connector_num_attention_heads": 2,
                       "video_connector_attention_head_dim": 8, "video_connector_num_layers": 1, "video_connector_num_learnable_registers": None,
                       "audio_connector_num_attention_heads": 2, "audio_connector_attention_head_dim": 8, "audio_connector_num_layers": 1,
                       "audio_connector_num_learnable_registers": None, "connector_rope_base_seq_len": 32, "rope_double_precision": False,
                       "rope_type": "split"},
        "gemma": {"hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8},
    },
}


def ltx2(path: Path, size: str = "tiny", device: str = "cpu") -> Path:
    """An LTX-2 image-to-video pipeline (transformer, video and audio VAEs, vocoder, connectors, Gemma 3 text
    encoder) with random weights, saved under `path`."""
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ImageToVideoPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    spec = LTX2[size]
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    tok = tokenizer()
    gemma = Gemma3Config(
        text_config={"vocab_size": len(tok), "max_position_embeddings": 2048, "sliding_window": 512, "pad_token_id": tok.pad_token_id, **spec["gemma"]},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    parts = {
        "transformer": _random(LTX2VideoTransformer3DModel, spec["transformer"], device, dtype),
        "vae": _random(AutoencoderKLLTX2Video, spec["vae"], device, dtype),
        "audio_vae": _random(AutoencoderKLLTX2Audio, spec["audio_vae"], device, dtype),
        "vocoder": _random(LTX2Vocoder, spec["vocoder"], device, dtype),
        "connectors": _random(LTX2TextConnectors, spec["connectors"], device, dtype),
        "text_encoder": _random(Gemma3ForConditionalGeneration, gemma, device, dtype),
    }
    if size == "tiny":
        parts["vae"].use_framewise_encoding = parts["vae"].use_framewise_decoding = False
    pipe = LTX2ImageToVideoPipeline(tokenizer=tok, scheduler=FlowMatchEulerDiscreteScheduler(), **parts)
    pipe.save_pretrained(path, max_shard_size="20GB")
    return path


def ltx2_upsampler(path: Path, latent_channels: int = 4) -> Path:
    """A tiny LTX-2 spatial latent upsampler (2x) with random weights, saved under `path`."""
    import torch
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    torch.manual_seed(0)
    LTX2LatentUpsamplerModel(in_channels=latent_channels, mid_channels=32, num_blocks_per_stage=1).save_pretrained(path)
    return path


def ltx_video(path: Path) -> Path:
    """A tiny LTX-Video image-to-video pipeline (transformer, VAE with 8x compression, T5 encoder) with random
    weights, saved under `path`: the wiring of the 0.9.x checkpoints, for tests."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    tok = tokenizer()
    tok.model_max_length = 128
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
                                             attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=16)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True, False),
                                decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
                                timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0))
    pipe = LTXImageToVideoPipeline(transformer=transformer, vae=vae, text_encoder=t5, tokenizer=tok, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(path)
    return path


def wan(path: Path) -> Path:
    """A tiny Wan 2.2 TI2V-style image-to-video pipeline (one transformer, the 16x VAE, T5 encoder, no image encoder)
    with random weights, saved under `path`."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    tok = tokenizer()
    tok.model_max_length = 128
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2, latents_mean=[0.0] * 48,
                           latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
                                        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4, decoder_start_token_id=0))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(transformer=transformer, vae=vae, text_encoder=t5, tokenizer=tok, scheduler=scheduler, transformer_2=None,
                                   image_encoder=None, image_processor=None, boundary_ratio=None, expand_timesteps=True)
    pipe.save_pretrained(path)
    return path


# Qwen2.5-14B-Instruct (the gpu profile's planner) and a LLaVA of Qwen2-7B + CLIP-L/336 (a 7B judge); "tiny" keeps
# the wiring. The random tokenizer's vocabulary is small: the real ~152k-token embedding and output head are not in.
LLM = {"full": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8},
       "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}}
VLM = {"full": {"text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                         "num_key_value_heads": 4},
                "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                           "image_size": 336, "patch_size": 14, "projection_dim": 768}},
       "tiny": {"text": LLM["tiny"], "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                "image_size": 56, "patch_size": 14, "projection_dim": 32}}}
# openai-whisper "small" (the gpu profile's QA model) and a 1-layer one.
WHISPER = {"full": {"n_audio_state": 768, "n_audio_head": 12, "n_audio_layer": 12, "n_text_state": 768, "n_text_head": 12, "n_text_layer": 12},
           "tiny": {"n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 1, "n_text_state": 64, "n_text_head": 2, "n_text_layer": 1}}


def llm(path: Path, size: str = "tiny", device: str = "cpu", vocab_size: int = 400, texts: list[str] | tuple[str, ...] = ()) -> Path:
    """A Qwen2 causal LM (Qwen2.5-14B's shape when `size` is full) with its tokenizer (trained on `texts` too, up to
    `vocab_size` tokens), saved under `path`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer(vocab_size, texts)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=32768, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **LLM[size])
    _random(Qwen2ForCausalLM, config, device, torch.bfloat16 if device != "cpu" else torch.float32).save_pretrained(path, max_shard_size="20GB")
    tok.save_pretrained(path)
    return path



def vlm(path: Path, size: str = "tiny", device: str = "cpu") -> Path:
    """A LLaVA (CLIP vision tower + Qwen2 LM) with processor and chat template, saved under `path`."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tokenizer()
    torch.manual_seed(0)
    config = LlavaConfig(
        text_config={"model_type": "qwen2", "vocab_size": len(tok), "max_position_embeddings": 4096,
                     "bos_token_id": None, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **VLM[size]["text"]},
        vision_config={"model_type": "clip_vision_model", **VLM[size]["vision"]},
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    _random(LlavaForConditionalGeneration, config, device, torch.bfloat16 if device != "cpu" else torch.float32).save_pretrained(
        path, max_shard_size="20GB")
    side = VLM[size]["vision"]["image_size"]
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                   image_token="<image>", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1).save_pretrained(path)
    return path




def whisper_checkpoint(path: Path, size: str = "tiny") -> Path:
    """A multilingual Whisper (openai-whisper "small" when `size` is full) with random weights, saved as
    openai-whisper's checkpoint format."""
    import torch
    import whisper
    from whisper.model import ModelDimensions

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_vocab=51865, n_text_ctx=448, **WHISPER[size])
    model = whisper.model.Whisper(dims)
    # openai-whisper leaves the decoder's positional embedding as torch.empty (a checkpoint always fills it):
    # whatever memory it got, NaN at times, would otherwise be saved as a weight.
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


def vits(path: Path, size: str = "tiny") -> Path:
    """A VITS (MMS-TTS: transformers' default config when `size` is full, else a small one) with a character
    tokenizer, saved under `path`."""
    import json

    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    path.mkdir(parents=True, exist_ok=True)
    chars = ["<pad>", *" abcdefghijklmnopqrstuvwxyz'.,!?-"]
    (path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    VitsTokenizer(str(path / "vocab.json"), add_blank=True, normalize=True, phonemize=False, pad_token="<pad>", unk_token="<pad>").save_pretrained(path)
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "ffn_dim": 64, "flow_size": 32, "upsample_initial_channel": 32,
             "spectrogram_bins": 65, "prior_encoder_num_flows": 2, "prior_encoder_num_wavenet_layers": 2,
             "posterior_encoder_num_wavenet_layers": 2, "duration_predictor_filter_channels": 32}
    config = VitsConfig(vocab_size=len(chars), sampling_rate=16000, **({} if size == "full" else small))
    VitsModel(config).save_pretrained(path)
    return path


def build_once(out: Path, name: str, builder: Any, **kwargs: Any) -> tuple[Path, float]:
    """`builder(out/name, **kwargs)` unless a saved pipeline is already there; (its path, seconds spent building).
    The random-weight copy is freed before the caller loads the saved one."""
    import time

    from storyboard.backends.hf_common import free_memory

    out.mkdir(parents=True, exist_ok=True)
    model = out / name
    started = time.perf_counter()
    if not (model / "model_index.json").is_file():
        builder(model, **kwargs)
        free_memory()
    return model, time.perf_counter() - started


def report(results: dict[str, Any], json_path: Path | None) -> None:
    """Print a benchmark's results and keep them as JSON when asked."""
    import json

    text = json.dumps(results, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text)
