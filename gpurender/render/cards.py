"""What the progress video draws besides the milestones' own frames: the captions over each
milestone, the sequence's title cards and the closing card's chart of score against training
progress. Each is a :class:`Sheet` of rects, text, points and lines at fixed places on one
1920 x 1080 frame, drawn by the frame renderer's own item passes (and a text pass with this
module's larger faces); a caption's score is a text field that changes every frame.

Every number drawn comes from the caller: the milestones' labels and the emulator's scores.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import moderngl
import numpy as np

from gpurender.milestones import Milestone
from gpurender.render.atlas import GlyphAtlas
from gpurender.render.layout import (
    BACKGROUND,
    BAR,
    BAR_BG,
    CYAN,
    DIM,
    HEADER,
    HEADER_H,
    PANEL_W,
    RULE,
    WHITE,
    YELLOW,
    Items,
)
from gpurender.render.passes import ItemRange, Target, TextPass, items_texture

RGBA = tuple[float, float, float, float]
SIZE = (1920, 1080)
"""The progress video's frame."""
FACES = {
    "display": (True, 72),
    "title": (True, 40),
    "body": (False, 26),
    "label": (False, 20),
    "cap1": (True, 22),
    "cap2": (True, 17),
    "cap3": (True, 13),
    "small": (False, 16),
}
"""The faces of the progress video's glyph atlas (a text pass holds at most 8)."""
GRID_LINE = (0.14, 0.16, 0.23, 1.0)
POINT = CYAN[:3]
"""A finished game on the chart (a disc of the node pass)."""
MEAN = YELLOW[:3]
"""A milestone's mean on the chart: a bar, and the line through the milestones' means."""


class Sheet:
    """Rects, text, points and lines at fixed places on one frame of :data:`SIZE`.

    Text is monospaced glyph slots of ``atlas``; a named text field may be given new text every
    frame (:meth:`set_text`). :meth:`draw` draws rects, then lines, points and text."""

    def __init__(self, atlas: GlyphAtlas) -> None:
        self.atlas = atlas
        self.rects, self.glyphs, self.nodes, self.edges = Items(), Items(), Items(), Items()
        self.chars = bytearray()
        self.fields: dict[str, tuple[int, int, str]] = {}
        """Name -> first slot, length, alignment."""
        self._gpu: dict[str, tuple[moderngl.Texture, int]] = {}
        self._t_chars: moderngl.Texture | None = None
        self._t_values: moderngl.Texture | None = None

    def width(self, font: str, text: str | int) -> int:
        """Pixels ``text`` (or that many characters) takes in ``font``."""
        return self.atlas.fonts[font].cell_w * (text if isinstance(text, int) else len(text))

    def rect(self, x: float, y: float, w: float, h: float, rgba: RGBA) -> None:
        self.rects.add((x, y, w, h), rgba)

    def text(self, x: float, y: float, font: str, text: str, rgba: RGBA = WHITE, *, align: str = "left",
             length: int | None = None, name: str | None = None) -> None:
        """``text`` with its top at ``y``; ``x`` is its left edge, its right edge (``align``
        ``"right"``) or its centre (``"centre"``). ``length`` slots (default: the text's), of which
        the field ``name`` may be set again later."""
        length = len(text) if length is None else length
        f = self.atlas.fonts[font]
        if align == "right":
            x -= length * f.cell_w
        elif align == "centre":
            x -= length * f.cell_w / 2
        x, y = round(x), round(y)  # whole pixels: glyphs are copied 1:1 from the atlas
        if name is not None:
            self.fields[name] = (len(self.glyphs), length, align)
        for i in range(length):
            self.glyphs.add((x + i * f.cell_w, y, f.index, 0), rgba)
        self.chars += _fit(text, length, align)

    def set_text(self, name: str, text: str) -> None:
        slot0, length, align = self.fields[name]
        self.chars[slot0 : slot0 + length] = _fit(text, length, align)

    def point(self, x: float, y: float, radius: float, rgb: tuple[float, float, float]) -> None:
        """A disc lit at full level (the network diagram's node, without a ring)."""
        self.nodes.add((x, y, radius, 0), (*rgb, 1.0), (0.0, 0.0, 0.0, 0.0), (-1, -1, -1, -1))

    def line(self, x0: float, y0: float, x1: float, y1: float, rgb: tuple[float, float, float]) -> None:
        """A glowing segment (the network diagram's edge at full strength)."""
        self.edges.add((x0, y0, x1, y1), (*rgb, 1.0), (0.0, 0.0, 0.0, 0.0), (0, 0, 0, 0))

    def draw(self, ctx: moderngl.Context, rects, edges, nodes, text: TextPass, dst: Target) -> None:
        """Draw the sheet over ``dst``'s frame with these passes (the text pass must hold this
        sheet's atlas). GL objects are made at the first call and kept until :meth:`release`."""
        if not self._gpu:
            for kind in ("rects", "edges", "nodes", "glyphs"):
                if len(getattr(self, kind)):
                    self._gpu[kind] = items_texture(ctx, getattr(self, kind))
            self._t_values = ctx.texture((1, 1), 1, np.ones(1, np.float32).tobytes(), dtype="f4")
            self._t_chars = ctx.texture((max(1, len(self.chars)), 1), 1, dtype="u1", alignment=1)
            for tex in (self._t_values, self._t_chars):
                tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
        if self.chars:
            self._t_chars.write(bytes(self.chars))
        for kind, pass_ in (("rects", rects), ("edges", edges), ("nodes", nodes), ("glyphs", text)):
            if kind in self._gpu:
                tex, count = self._gpu[kind]
                pass_.render(ItemRange(tex, 0, count, self._t_values, self._t_chars), dst)
        ctx.disable(moderngl.BLEND)

    def release(self) -> None:
        for tex, _ in self._gpu.values():
            tex.release()
        for tex in (self._t_values, self._t_chars):
            if tex is not None:
                tex.release()
        self._gpu.clear()
        self._t_values = self._t_chars = None


def _fit(text: str, length: int, align: str) -> bytes:
    text = text[:length]
    text = text.rjust(length) if align == "right" else text.center(length) if align == "centre" else text.ljust(length)
    return text.encode("ascii", "replace")


# -- what a milestone is called ----------------------------------------------------------------------


def compact_steps(steps: int) -> str:
    """``75000`` -> ``75k``, ``1500000`` -> ``1.5M``: a chart label."""
    for div, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if steps >= div:
            return f"{steps / div:.3g}{unit}"
    return str(steps)


def milestone_caption(m: Milestone) -> str:
    """``25% | step 75,000``, ``25%``, ``step 75,000`` or the checkpoint's name."""
    parts = [f"{m.pct:g}%"] if m.pct is not None else []
    if m.steps is not None:
        parts.append(f"step {m.steps:,}")
    return " | ".join(parts) or m.display


def score_text(score: float) -> str:
    """The live score as a caption shows it: ``score 11`` (the game's score is whole in every
    Atari game; a fraction is shown if one comes)."""
    return f"score {score:,.0f}" if float(score).is_integer() else f"score {score:,.1f}"


# -- the grid and its captions -------------------------------------------------------------------------

Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class Placement:
    """Where milestone frames go in the progress video: one rectangle per milestone, all at
    ``scale`` (a rectangle's size over a 960 x 540 frame's)."""

    scale: float
    cells: tuple[Rect, ...]


def grid_placement(n: int) -> Placement:
    """``n`` (1..16) frames side by side: 2 x 2 at full size for up to 4, 3 x 3 at 2/3 for up to 9,
    4 x 4 at 1/2 for up to 16; rows that are not full are centred, and so are the rows."""
    if not 1 <= n <= 16:
        raise ValueError(f"a grid holds 1 to 16 milestones, got {n}")
    cols = 2 if n <= 4 else 3 if n <= 9 else 4
    w, h = SIZE[0] / cols, SIZE[1] / cols
    rows = -(-n // cols)
    y0 = (cols - rows) * h / 2
    cells = []
    for k in range(n):
        row, col = divmod(k, cols)
        in_row = min(cols, n - row * cols)
        cells.append(((cols - in_row) * w / 2 + col * w, y0 + row * h, w, h))
    return Placement(1.0 if cols == 2 else 2 / cols, tuple(cells))


def full_placement() -> Placement:
    """One frame over the whole progress frame (2x: 960 x 540 -> 1920 x 1080)."""
    return Placement(SIZE[0] / (2 * PANEL_W), ((0.0, 0.0, float(SIZE[0]), float(SIZE[1])),))


def caption_font(scale: float) -> str:
    return "title" if scale >= 2 else "cap1" if scale >= 1 else "cap2" if scale >= 0.6 else "cap3"


def captions(atlas: GlyphAtlas, placement: Placement, labels: Sequence[str]) -> Sheet:
    """A caption over each cell's panel header: the milestone's label (field ``label<k>``) on
    the left and its live score (field ``score<k>``, :func:`score_text`) on the right. The box is opaque: it hides the
    panel's title, which the grid's captions replace."""
    sheet = Sheet(atlas)
    s = placement.scale
    font = caption_font(s)
    cell_h = atlas.fonts[font].cell_h
    for k, ((x, y, _, _), label) in enumerate(zip(placement.cells, labels, strict=True)):
        box_w, box_h = PANEL_W * s, HEADER_H * s
        pad = max(5.0, 10 * s)
        sheet.rect(x, y, box_w, box_h, HEADER)
        sheet.rect(x, y, max(3.0, 5 * s), box_h, CYAN)
        chars = int((box_w - 2 * pad - max(3.0, 5 * s)) // atlas.fonts[font].cell_w)
        score_len = min(12, max(8, chars // 3))
        ty = y + (box_h - cell_h) / 2
        sheet.text(x + pad + max(3.0, 5 * s), ty, font, label, WHITE, length=max(1, chars - score_len - 1),
                   name=f"label{k}")
        sheet.text(x + box_w - pad, ty, font, "", YELLOW, align="right", length=score_len, name=f"score{k}")
    return sheet


# -- cards -----------------------------------------------------------------------------------------


def background(sheet: Sheet) -> None:
    sheet.rect(0, 0, *SIZE, (*BACKGROUND, 1.0))


def title_card(atlas: GlyphAtlas, m: Milestone, index: int, count: int, run: str, last_steps: int | None) -> Sheet:
    """The card before milestone ``index`` (0-based) of ``count`` in the sequence: its percent
    and step, a bar of its progress through training (its percent, or its steps over
    ``last_steps``, the run's last milestone's), and the checkpoint's file name. ``run``:
    ``Breakout | PPO``."""
    sheet = Sheet(atlas)
    background(sheet)
    cx, top = SIZE[0] / 2, 320  # the block (320 .. 760) is centred on the card
    sheet.text(cx, top, "body", f"{run} | training progress", DIM, align="centre")
    sheet.text(cx, top + 50, "label", f"milestone {index + 1} of {count}", DIM, align="centre")
    big = f"{m.pct:g}%" if m.pct is not None else f"step {m.steps:,}" if m.steps is not None else m.display
    sheet.text(cx, top + 140, "display", big, WHITE, align="centre")
    if m.pct is not None and m.steps is not None:
        sheet.text(cx, top + 260, "title", f"step {m.steps:,}", CYAN, align="centre")
    fraction = (m.pct / 100 if m.pct is not None
                else m.steps / last_steps if m.steps is not None and last_steps else None)
    if fraction is not None:
        bar_w = 800
        sheet.rect(cx - bar_w / 2, top + 370, bar_w, 14, BAR_BG)
        sheet.rect(cx - bar_w / 2, top + 370, bar_w * min(max(fraction, 0.0), 1.0), 14, BAR)
    sheet.text(cx, top + 420, "small", m.path.name, DIM, align="centre")
    return sheet


@dataclass
class ChartData:
    """What the closing card's chart drew, in its pixels (the PNG's): every finished game's point
    and every milestone's mean."""

    plot: Rect
    """The plot area: x, y (top), w, h."""
    y_range: tuple[float, float]
    """Scores at the plot's bottom and top edges."""
    x_kind: str
    """``percent``, ``steps`` or ``order`` (evenly spaced in training order)."""
    xs: list[float] = field(default_factory=list)
    """Each milestone's x (pixels)."""
    points: list[tuple[int, float, float, float]] = field(default_factory=list)
    """(milestone index, return, x, y) per finished game."""
    means: list[tuple[int, float, float]] = field(default_factory=list)
    """(milestone index, mean return, y) per milestone that finished a game."""


PLOT = (200.0, 222.0, 1640.0, 600.0)
"""The chart's plot area on the closing card: x, y (top), w, h."""
X_PAD = 70.0
"""Room between the plot's sides and the first and last milestones."""


def nice_axis(lo: float, hi: float, ticks: int = 6) -> tuple[float, float, float]:
    """-> (lo, hi, step): ``lo..hi`` widened to whole steps of 1, 2, 2.5 or 5 x 10^k (about
    ``ticks`` of them, a step more above a highest value close to the top); whole-number steps
    when the range is small (scores are whole)."""
    span = max(hi - lo, 1.0)
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    step = max(step, 1.0)
    top = max(math.ceil(hi / step) * step, math.floor(lo / step) * step + step)
    if top - hi < 0.2 * step and hi > 0:
        top += step  # headroom: the highest points are not drawn on the frame's edge
    return math.floor(lo / step) * step, top, step


def milestone_xs(milestones: Sequence[Milestone]) -> tuple[list[float], str]:
    """Each milestone's x on the chart and how x is measured: by percent of training when every
    milestone has one, else by steps when every one has them, else (or where that would put two
    milestones closer than 90 pixels) evenly in training order."""
    x0, w = PLOT[0] + X_PAD, PLOT[2] - 2 * X_PAD
    n = len(milestones)
    even = [x0 + w * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    if all(m.pct is not None for m in milestones):
        keys, kind, top = [m.pct for m in milestones], "percent", 100.0
    elif all(m.steps is not None for m in milestones):
        keys, kind, top = [float(m.steps) for m in milestones], "steps", None
    else:
        return even, "order"
    hi = max(max(keys), top or 0.0)
    lo = min(min(keys), 0.0)
    xs = [x0 + w * (k - lo) / (hi - lo) if hi > lo else x0 + w / 2 for k in keys]
    if n > 1 and min(b - a for a, b in itertools.pairwise(xs)) < 90:
        return even, "order"
    return xs, kind


def _axis_title(kind: str) -> str:
    return {"percent": "training progress (% of the run's timesteps)",
            "steps": "training progress (environment steps)",
            "order": "milestones in training order (not to scale)"}[kind]


def _y_ticks(sheet: Sheet, lo: float, hi: float, step: float, to_y) -> None:
    x, y, w, h = PLOT
    value = lo
    while value <= hi + step * 1e-6:
        yy = to_y(value)
        sheet.rect(x, round(yy), w, 1, GRID_LINE if value != 0 else RULE)
        label = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
        sheet.text(x - 14, yy - 10, "label", label, DIM, align="right")
        value += step
    sheet.rect(x, y, 1, h, RULE)
    sheet.rect(x, y + h, w, 1, RULE)


def chart_card(atlas: GlyphAtlas, milestones: Sequence[Milestone], returns: Sequence[Sequence[float]],
               run: str, games: str, clip: str) -> tuple[Sheet, ChartData]:
    """The closing card: score against training progress. ``returns[i]``: the returns of the
    games milestone ``i`` finished within its clip (all its games), drawn as points (equal
    returns side by side), with their mean as a bar and a line through the means; a milestone
    that finished none says so. ``run``: ``Breakout | PPO``; ``games``: how many games each
    milestone played and how (the subtitle); ``clip``: the clip's length (``20 s, 600 steps``)."""
    sheet = Sheet(atlas)
    background(sheet)
    sheet.text(80, 40, "title", "Score against training progress", WHITE)
    sheet.text(SIZE[0] - 80, 48, "body", run, CYAN, align="right")
    sheet.rect(0, 104, SIZE[0], 1, RULE)
    sheet.text(80, 116, "label", f"Each point: one game a milestone finished within its clip ({clip}); {games}.",
               DIM)
    sheet.text(80, 142, "label", "Bar and line: the mean of a milestone's finished games. Games still running at "
               "the clip's end are not counted.", DIM)
    everything = [r for rs in returns for r in rs]
    lo, hi, step = nice_axis(min([0.0, *everything]), max([0.0, *everything]))
    x, y, _, h = PLOT

    def to_y(value: float) -> float:
        return y + h - (value - lo) / (hi - lo) * h

    sheet.text(x, y - 36, "label", "score of a whole game (all lives, unclipped)", DIM)
    _y_ticks(sheet, lo, hi, step, to_y)
    xs, kind = milestone_xs(milestones)
    data = ChartData(PLOT, (lo, hi), kind, xs)
    spacing = min([b - a for a, b in itertools.pairwise(xs)] or [400.0])
    wide = spacing >= 170
    for i, (m, mx, rs) in enumerate(zip(milestones, xs, returns, strict=True)):
        _x_labels(sheet, m, mx, rs, y + h, wide)
        if not rs:
            continue
        mean = float(np.mean(rs))
        data.means.append((i, mean, to_y(mean)))
        bar = min(30.0, spacing * 0.35)
        sheet.rect(mx - bar, round(to_y(mean)) - 2, 2 * bar, 4, (*MEAN, 1.0))
        for value, dx in _spread(rs, min(2 * X_PAD - 20, spacing * 0.6)):
            data.points.append((i, value, mx + dx, to_y(value)))
    for (i0, _, y0), (i1, _, y1) in itertools.pairwise(data.means):
        if i1 == i0 + 1:  # no line across a milestone that finished no game
            sheet.line(xs[i0], y0, xs[i1], y1, MEAN)
    for _, _, px, py in data.points:
        sheet.point(px, py, 7.0, POINT)
    sheet.text(SIZE[0] / 2, y + h + 118, "label", _axis_title(kind), DIM, align="centre")
    _footnote(sheet, [m.display for m, rs in zip(milestones, returns, strict=True) if not rs], len(milestones))
    return sheet, data


POINT_GAP = 18.0
"""Centre to centre of equal returns side by side (closer when many must fit)."""


def _x_labels(sheet: Sheet, m: Milestone, x: float, returns: Sequence[float], axis_y: float, wide: bool) -> None:
    """Under milestone ``m``'s tick: its percent (or steps), its steps, and how many games it
    finished with their mean, or that it finished none (two short lines where milestones are
    close together)."""
    sheet.rect(round(x), axis_y, 1, 8, RULE)
    head = f"{m.pct:g}%" if m.pct is not None else compact_steps(m.steps) if m.steps is not None else m.display
    sheet.text(x, axis_y + 12, "cap1", head, WHITE, align="centre")
    if m.pct is not None and m.steps is not None:
        sheet.text(x, axis_y + 40, "small", f"{compact_steps(m.steps)} steps", DIM, align="centre")
    if not returns:
        sheet.text(x, axis_y + 62, "small", "no game finished" if wide else "none", DIM, align="centre")
        return
    mean = float(np.mean(returns))
    mean_text = f"mean {mean:,.1f}" if abs(mean) < 100 else f"mean {mean:,.0f}"
    lines = [f"n={len(returns)}, {mean_text}"] if wide else [f"n={len(returns)}", mean_text]
    for k, line in enumerate(lines):
        sheet.text(x, axis_y + 62 + 20 * k, "small", line, (*MEAN, 1.0), align="centre")


def _footnote(sheet: Sheet, none: Sequence[str], milestones: int) -> None:
    """Which milestones finished no game within the clip, if any (cut to the card's width)."""
    if not none:
        return
    width = (SIZE[0] - 160) // sheet.atlas.fonts["label"].cell_w
    first = ("No milestone finished a game within the clip." if len(none) == milestones
             else f"No game finished within the clip for: {', '.join(none)}.")
    if len(first) > width:
        first = first[: width - 4] + " ..."
    sheet.text(80, SIZE[1] - 76, "label", first, DIM)
    sheet.text(80, SIZE[1] - 48, "label", "Only finished games count; a longer --clip-seconds gives games time to end.",
               DIM)


def _spread(values: Sequence[float], width: float) -> list[tuple[float, float]]:
    """(value, x offset) per value: equal values side by side, centred, :data:`POINT_GAP` apart
    or closer, so that a row spans at most ``width``."""
    out = []
    for value in sorted(set(values)):
        k = values.count(value)
        gap = min(POINT_GAP, width / (k - 1)) if k > 1 else 0.0
        out += [(value, (j - (k - 1) / 2) * gap) for j in range(k)]
    return out


__all__ = ["FACES", "SIZE", "ChartData", "Placement", "Sheet", "captions", "chart_card", "full_placement",
           "grid_placement", "milestone_caption", "score_text", "title_card"]
