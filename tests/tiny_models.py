"""Tiny real models with random weights, built in-process and saved: loaded back by the product's own loaders.

Nothing here downloads: configs are written out, tokenizers are trained on a few sentences.
"""

from __future__ import annotations

from bench.random_models import (  # noqa: F401 - shared with the GPU benchmarks
    CHAT_TEMPLATE,
    flux,
    llm,
    ltx2,
    ltx2_upsampler,
    ltx_video,
    tokenizer,
    vits,
    vlm,
    wan,
    whisper_checkpoint,
)
