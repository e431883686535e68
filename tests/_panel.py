"""Reading a decoded frame's panel back: colours as the decoder returns them and text fields
read glyph by glyph against the panel font's own atlas."""

from __future__ import annotations

import re

import numpy as np

from gpurender.render.atlas import FIRST, LAST, GlyphAtlas
from gpurender.render.layout import FACES, PanelLayout, PanelSpec

UNREADABLE = 100.0
"""Mean squared luma error above which a text cell matches no glyph (a clean match is under ~10)."""


HUD = re.compile(r"(--|\d+) fps +infer +(--|[\d.]+) +draw +(--|[\d.]+) ms")
"""The ``--hud`` line as :func:`gpurender.render.layout.hud_text` writes it."""


def demo_layout(view: str = "activations", hud: bool = False) -> PanelLayout:
    """The panel layout of the bundled demo's milestones with these options."""
    from gpurender.agents import Agent
    from gpurender.demo import GAME, demo_checkpoints
    from gpurender.games import action_meanings, resolve_game

    game = resolve_game(GAME)
    layers = tuple(Agent(demo_checkpoints()[-1], device="cpu").layers)
    spec = PanelSpec(game.title, "PPO", action_meanings(game), layers, "100%", True, 2.5e-4, network_view=view, hud=hud)
    return PanelLayout(spec, GlyphAtlas(FACES))


def luma(rgb) -> float:
    """Limited-range BT.601 luma of an RGB colour in [0, 1], as the decoder gives it back."""
    r, g, b = rgb[:3]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


class PanelReader:
    """Reads a layout's text fields from a luma plane glyph by glyph: each character cell is
    matched against every printable glyph of the field's font, drawn from the atlas the renderer
    uploads, in the field's colours."""

    def __init__(self, layout: PanelLayout) -> None:
        self.layout = layout
        atlas = layout.atlas
        self.glyphs: dict[str, np.ndarray] = {}
        for key, f in atlas.fonts.items():
            cells = []
            for code in range(FIRST, LAST + 1):
                k = code - FIRST
                y0, x0 = f.origin_y + (k // 16) * f.cell_h, (k % 16) * f.cell_w
                cells.append(atlas.image[y0 : y0 + f.cell_h, x0 : x0 + f.cell_w] / 255.0)
            self.glyphs[key] = np.stack(cells)

    def _cells(self, y: np.ndarray, name: str) -> np.ndarray:
        f = self.layout.fields[name]
        font = self.layout.atlas.fonts[f.font]
        x0, y0 = int(f.x), int(f.y)
        box = y[y0 : y0 + font.cell_h, x0 : x0 + f.length * font.cell_w]
        return box.reshape(font.cell_h, f.length, font.cell_w).transpose(1, 0, 2)

    def read(self, y: np.ndarray, name: str, fg, bg, charset: str | None = None) -> tuple[str, float]:
        """-> (the field's text, its least certain glyph's margin: how much worse the second-best
        glyph fits than the best, in mean squared luma). Cells no glyph fits (another item drawn
        over the field's trailing blanks) read as ``?``; trailing blanks and ``?`` are dropped.
        ``charset``: the only characters the field can hold; each cell is then compared only on
        the rows where those glyphs have ink, so rows packed closer than the font's cell height
        (18 actions) do not read their neighbours' glyphs."""
        f = self.layout.fields[name]
        lo, hi = luma(bg), luma(fg)
        codes = np.arange(LAST - FIRST + 1) if charset is None else np.array([ord(c) - FIRST for c in charset])
        glyphs = self.glyphs[f.font][codes]
        rows = slice(None)
        if charset is not None:
            ink = np.flatnonzero(glyphs.max(axis=(0, 2)) > 0.1)
            rows = slice(max(0, ink[0] - 1), ink[-1] + 2)
        templates = lo + glyphs[:, rows] * (hi - lo)  # (glyphs, h, w)
        cells = self._cells(y, name)[:, rows]  # (length, h, w)
        dist = ((cells[:, None] - templates[None]) ** 2).mean(axis=(2, 3))  # (length, glyphs)
        best = dist.argmin(axis=1)
        fit = dist[np.arange(len(best)), best]
        text = "".join("?" if d > UNREADABLE else chr(FIRST + codes[i]) for i, d in zip(best, fit, strict=True))
        text = text.rstrip(" ?")
        ordered = np.sort(dist[: len(text)], axis=1)
        margin = float((ordered[:, 1] - ordered[:, 0]).min()) if text else 0.0
        return text, margin
