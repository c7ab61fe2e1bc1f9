"""Offline judge: rejects blank, uniform, low-contrast, wrong-size or unreadable images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import BackendBase, ImageRequest, Verdict, register


@register("judge", "heuristic")
class HeuristicJudge(BackendBase):
    """Checks what can be checked without a vision model."""

    name = "heuristic"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.min_std = float(settings.get("min_std", 4.0))

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "min_std": self.min_std}

    def judge(self, image: Path, request: ImageRequest) -> Verdict:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as img:
                img.load()
                size = img.size
                pixels = np.asarray(img.convert("L"), dtype=np.float32)
        except (OSError, UnidentifiedImageError) as error:
            return Verdict(False, f"unreadable image: {error}")
        if size != (request.width, request.height):
            return Verdict(False, f"size {size[0]}x{size[1]}, expected {request.width}x{request.height}")
        if not np.isfinite(pixels).all():
            return Verdict(False, "image has NaN pixels")
        std = float(pixels.std())
        if std < self.min_std:
            return Verdict(False, f"blank or uniform image (contrast {std:.1f} < {self.min_std})")
        return Verdict(True, f"readable, {size[0]}x{size[1]}, contrast {std:.1f}")
