"""Tiny real models with random weights, built in-process and saved: loaded back by the product's own loaders.

Nothing here downloads: configs are written out, tokenizers are trained on a few sentences.
"""

from __future__ import annotations

from pathlib import Path

from bench.random_models import CHAT_TEMPLATE, flux, ltx2, ltx2_upsampler, ltx_video, tokenizer, wan  # noqa: F401 - shared with the GPU benchmarks


def llm(path: Path) -> Path:
    """A 1-layer Qwen2 causal LM with its tokenizer, saved under `path`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=32768, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path



def vlm(path: Path) -> Path:
    """A 1-layer LLaVA (CLIP vision tower + Qwen2 LM) with processor and chat template, saved under `path`."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tokenizer()
    torch.manual_seed(0)
    config = LlavaConfig(
        text_config={"model_type": "qwen2", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
                     "bos_token_id": None, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 56, "patch_size": 14, "projection_dim": 32},
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlavaForConditionalGeneration(config).save_pretrained(path)
    images = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                   image_token="<image>", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1).save_pretrained(path)
    return path




def whisper_checkpoint(path: Path) -> Path:
    """A 1-layer multilingual Whisper with random weights, saved as openai-whisper's checkpoint format."""
    import torch
    import whisper
    from whisper.model import ModelDimensions

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    model = whisper.model.Whisper(dims)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


def vits(path: Path) -> Path:
    """A small VITS (MMS-TTS architecture) with a character tokenizer, saved under `path`."""
    import json

    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    path.mkdir(parents=True, exist_ok=True)
    chars = ["<pad>", *" abcdefghijklmnopqrstuvwxyz'.,!?-"]
    (path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    VitsTokenizer(str(path / "vocab.json"), add_blank=True, normalize=True, phonemize=False, pad_token="<pad>", unk_token="<pad>").save_pretrained(path)
    torch.manual_seed(0)
    config = VitsConfig(vocab_size=len(chars), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, flow_size=32,
                        upsample_initial_channel=32, spectrogram_bins=65, prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2,
                        posterior_encoder_num_wavenet_layers=2, duration_predictor_filter_channels=32, sampling_rate=16000)
    VitsModel(config).save_pretrained(path)
    return path
