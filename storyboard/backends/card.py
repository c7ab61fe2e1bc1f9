"""Offline image backend: a drawn storyboard card per beat at the run's size."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from ..fonts import drawable, find_fonts
from . import BackendBase, ImageRequest, register

STAGE_LOOK_VERSION = 3


def _colour(text: str, lightness: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return tuple(int(lightness + (b / 255) * 60) for b in digest[:3])  # type: ignore[return-value]


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


@register("image", "card")
class CardRenderer(BackendBase):
    """Setting colour, who is in frame, beat number and type, expression and prompt."""

    name = "card"

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "look": STAGE_LOOK_VERSION}

    def draw(self, request: ImageRequest, out: Path) -> None:
        from PIL import Image, ImageDraw, ImageFont

        w, h = request.width, request.height
        rng = random.Random(request.seed)
        base = _colour(request.setting, 40)
        img = Image.new("RGB", (w, h), base)
        draw = ImageDraw.Draw(img)
        # A vertical gradient and a horizon line give the setting a place; the seed moves it.
        horizon = int(h * rng.uniform(0.55, 0.7))
        floor = _colour(request.setting + "floor", 90)
        for y in range(horizon, h):
            t = (y - horizon) / max(1, h - horizon)
            draw.line([(0, y), (w, y)], fill=tuple(int(a * (1 - t) + b * t) for a, b in zip(base, floor)))

        text = " ".join([request.prompt, request.expression, request.beat_type, *request.characters, request.caption])
        font_path = find_fonts(text + "BEAT0123456789·").path
        scale = h / 768

        def font(size: float) -> Any:
            return ImageFont.truetype(str(font_path), max(8, int(size * scale)))

        # Who is in frame: one figure per character, evenly spaced.
        names = request.characters or ["(empty frame)"]
        for i, who in enumerate(names):
            cx = int(w * (i + 1) / (len(names) + 1) + rng.uniform(-0.03, 0.03) * w)
            r = int(min(w / (2.6 * len(names) + 1), h * 0.09))
            top = horizon - int(3.2 * r)
            colour = _colour(who, 120)
            draw.ellipse([cx - r, top, cx + r, top + 2 * r], fill=colour, outline=(20, 20, 20), width=3)
            draw.rounded_rectangle([cx - int(1.3 * r), top + 2 * r + 6, cx + int(1.3 * r), horizon + int(0.8 * r)], radius=r // 2, fill=colour, outline=(20, 20, 20), width=3)
            draw.text((cx, horizon + int(1.1 * r)), drawable(who, font_path), font=font(22), fill=(255, 255, 255), anchor="ma", stroke_width=2, stroke_fill=(0, 0, 0))

        # Header: beat number and type (kept inside the Ken Burns crop margin).
        margin = int(w * 0.08)
        header_top = int(h * 0.16)  # the hook title is pinned to the very top of the final
        draw.rectangle([0, header_top, w, header_top + int(52 * scale)], fill=(15, 15, 15))
        label = "HOOK" if request.number == 0 else f"BEAT {request.number:02d} · {request.beat_type.upper()}"
        draw.text((margin, header_top + int(10 * scale)), label, font=font(30), fill=(255, 210, 60))

        # Body: expression and the image prompt, wrapped to the frame by measured width.
        body_font = font(20)
        y = header_top + int(64 * scale)
        for paragraph in [request.caption, request.expression]:
            for line in _wrap(draw, drawable(paragraph, font_path), body_font, w - 2 * margin)[:5]:
                draw.text((margin, y), line, font=body_font, fill=(240, 240, 240), stroke_width=1, stroke_fill=(0, 0, 0))
                y += int(26 * scale)
            y += int(10 * scale)
        # The setting sits under the prompt: the bottom of the frame belongs to the subtitles.
        for line in _wrap(draw, drawable(request.setting, font_path), font(16), w - 2 * margin)[:2]:
            draw.text((margin, y), line, font=font(16), fill=(210, 230, 255), stroke_width=1, stroke_fill=(0, 0, 0))
            y += int(20 * scale)
        img.save(out, format="PNG")
