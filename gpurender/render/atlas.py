"""Glyph atlas: the printable ASCII range of the bundled DejaVu Sans Mono, rasterised by FreeType
(through Pillow) at the sizes the panel uses, packed into one R8 texture."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FIRST, LAST, COLUMNS = 32, 126, 16


@dataclass(frozen=True)
class Font:
    """One face at one pixel size inside the atlas."""

    index: int
    origin_y: int
    cell_w: int
    cell_h: int


def font_path(bold: bool = False) -> Path:
    name = "DejaVuSansMono-Bold.ttf" if bold else "DejaVuSansMono.ttf"
    return Path(str(resources.files("gpurender") / "assets" / "fonts" / name))


class GlyphAtlas:
    """Rasterise (bold, size) faces; ``image`` is the atlas, ``fonts[key]`` their cells."""

    def __init__(self, faces: dict[str, tuple[bool, int]]) -> None:
        blocks: list[np.ndarray] = []
        self.fonts: dict[str, Font] = {}
        y = 0
        for i, (key, (bold, size)) in enumerate(faces.items()):
            face = ImageFont.truetype(str(font_path(bold)), size)
            ascent, descent = face.getmetrics()
            cell_w, cell_h = round(face.getlength("M")), ascent + descent
            rows = -(-(LAST - FIRST + 1) // COLUMNS)
            img = Image.new("L", (COLUMNS * cell_w, rows * cell_h), 0)
            draw = ImageDraw.Draw(img)
            for code in range(FIRST, LAST + 1):
                k = code - FIRST
                draw.text(((k % COLUMNS) * cell_w, (k // COLUMNS) * cell_h), chr(code), font=face, fill=255)
            blocks.append(np.asarray(img))
            self.fonts[key] = Font(i, y, cell_w, cell_h)
            y += img.height
        width = max(b.shape[1] for b in blocks)
        self.image = np.zeros((y, width), np.uint8)
        for font, block in zip(self.fonts.values(), blocks, strict=True):
            self.image[font.origin_y : font.origin_y + block.shape[0], : block.shape[1]] = block
