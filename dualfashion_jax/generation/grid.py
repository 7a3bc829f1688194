"""One small PIL image per row: labelled sections of thumbnails (history | incomplete outfit | generated | GT),
each with its attribute caption printed underneath (one "Key: value" line per attribute)."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dualfashion_jax.text.tokenizer import parse_caption

THUMB = 112
LABEL_W = 120
TEXT_LINES = 7
LINE_H = 11


def caption_lines(caption: str, width: int = 20) -> list[str]:
    """A caption as short lines: parsed attributes ("Color: red"), else the wrapped raw text."""
    if not caption:
        return []
    attrs = parse_caption(caption)
    lines = [f"{k.split()[0]}: {v}" for k, v in attrs.items()] if attrs else [caption]
    out = [w for line in lines for w in textwrap.wrap(line, width)]
    return out[:TEXT_LINES]


def grid_image(sections: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]]) -> Image.Image:
    """sections: [(label, [(uint8 HxWx3 image, caption), ...]), ...] -> one RGB image, a row per section."""
    font = ImageFont.load_default()
    cols = max([len(items) for _, items in sections] + [1])
    row_h = THUMB + TEXT_LINES * LINE_H + 8
    canvas = Image.new("RGB", (LABEL_W + cols * (THUMB + 6), len(sections) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, items) in enumerate(sections):
        y = r * row_h
        for i, line in enumerate(textwrap.wrap(label, 18)[:4]):
            draw.text((4, y + 4 + i * LINE_H), line, fill="black", font=font)
        if not items:
            draw.text((LABEL_W, y + 4), "(none)", fill="gray", font=font)
        for c, (img, caption) in enumerate(items):
            x = LABEL_W + c * (THUMB + 6)
            thumb = Image.fromarray(np.asarray(img, np.uint8)).convert("RGB").resize((THUMB, THUMB), Image.BILINEAR)
            canvas.paste(thumb, (x, y + 2))
            for i, line in enumerate(caption_lines(caption)):
                draw.text((x, y + THUMB + 4 + i * LINE_H), line, fill="black", font=font)
    return canvas
