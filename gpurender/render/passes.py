"""Render passes: each drawing effect is one class that owns its program(s), sets its own fixed
uniforms and binds its inputs to its texture units, and draws with one ``render(src, dst)``
(pygfx's ``EffectPass`` is the model).

``src`` is what a pass reads (textures, an item range), ``dst`` the framebuffer it writes: a
:class:`Target` of frames stacked as tiles, or the preview window's framebuffer. Texture units
are allocated in :class:`Unit` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple, Protocol, TypeVar

import moderngl

from gpurender.render.atlas import GlyphAtlas
from gpurender.render.layout import (
    ATTRIBUTION_AGAINST,
    FRAME_H,
    FRAME_W,
    GAME_RECT,
    PALETTE,
    RULE,
    SALIENCY_ACTOR,
    SALIENCY_ALPHA,
    SALIENCY_CRITIC,
    Items,
)
from gpurender.render.shaders import load_program

BLEND_OVER = (moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA)
BLEND_ADD = (moderngl.ONE, moderngl.ONE)
RGBA = tuple[float, float, float, float]


class _Releasable(Protocol):
    def release(self) -> None: ...


_R = TypeVar("_R", bound=_Releasable)


class Unit(IntEnum):
    """The texture unit of each sampler uniform, by name: ``Unit.VALUES`` is ``t_values``'s.

    Every program's sampler uniforms are pointed at these units when it is compiled, and a pass
    binds its inputs to them, so programs sharing a context never fight over a unit."""

    VALUES = 0
    ITEMS = 1
    CHARS = 2
    ATLAS = 3
    SCREENS = 4
    RGB = 5
    FRAME = 6
    SALIENCY = 7

    @property
    def sampler(self) -> str:
        """The sampler uniform's name in the shaders."""
        return f"t_{self.name.lower()}"


class Target(NamedTuple):
    """A framebuffer holding ``tiles`` frames stacked vertically: frame ``k`` starts at GL row
    ``k x tile height``, its top row first, so reading rows in order yields top-down images."""

    fbo: moderngl.Framebuffer
    tiles: int = 1

    @property
    def texture(self) -> moderngl.Texture:
        """The colour texture the frames are drawn into."""
        return self.fbo.color_attachments[0]

    def uv_rect(self, tile: int) -> RGBA:
        """Tile ``tile`` in texture coordinates: u0, v0, u1, v1."""
        return (0.0, tile / self.tiles, 1.0, (tile + 1) / self.tiles)

    def use(self) -> None:
        """Draw into the whole framebuffer from now on."""
        self.fbo.use()
        self.fbo.ctx.viewport = (0, 0, *self.fbo.size)


class Program:
    """``shaders/<name>.glsl`` compiled, its sampler uniforms pointed at their :class:`Unit`, and
    a vertex array without buffers: its quads' corners come from ``gl_VertexID``."""

    def __init__(self, ctx: moderngl.Context, name: str, defines: tuple[str, ...] = (), **uniforms: object) -> None:
        self.program = load_program(ctx, name, defines)
        self.vao = ctx.vertex_array(self.program, [])
        for unit in Unit:
            if unit.sampler in self.program:
                self.program[unit.sampler].value = int(unit)
        self.set(**uniforms)

    def set(self, **uniforms: object) -> None:
        """Set uniforms by name; a name the compiler optimised away is skipped."""
        for name, value in uniforms.items():
            if name in self.program:
                self.program[name].value = value

    def draw(self, instances: int) -> None:
        """``instances`` quads (4-vertex triangle strips)."""
        self.vao.render(moderngl.TRIANGLE_STRIP, vertices=4, instances=instances)

    def release(self) -> None:
        self.vao.release()
        self.program.release()


class Pass:
    """A drawing effect: ``render(src, dst)`` draws what ``src`` holds into ``dst``;
    :meth:`release` frees the GL objects it owns (never its inputs)."""

    def __init__(self, ctx: moderngl.Context) -> None:
        self.ctx = ctx
        self._owned: list[_Releasable] = []

    def own(self, obj: _R) -> _R:
        """Take ``obj`` into this pass's keeping: :meth:`release` frees it."""
        self._owned.append(obj)
        return obj

    def release(self) -> None:
        while self._owned:
            self._owned.pop().release()


# -- the frame: tiled passes ------------------------------------------------------------------------


class TiledPass(Pass):
    """A pass drawing frames ``first ..`` of a tiled :class:`Target` (``shaders/common.glsl``)."""

    shader: str

    def __init__(self, ctx: moderngl.Context, **uniforms: object) -> None:
        super().__init__(ctx)
        self.program = self.own(Program(ctx, self.shader, u_frame_size=(FRAME_W, FRAME_H), **uniforms))

    def _into(self, dst: Target, first: int) -> None:
        dst.use()
        width, height = dst.fbo.size
        self.program.set(u_frame_size=(width, height // dst.tiles), u_tiles=dst.tiles, u_tile0=first)


class GamePass(TiledPass):
    """The game screens, one layer of a texture array per frame, scaled (nearest) into the
    frame's game rectangle; with saliency maps, those blended over them (the ``SALIENCY``
    variant of ``shaders/game.glsl``, compiled when first used)."""

    shader = "game"

    def __init__(self, ctx: moderngl.Context) -> None:
        super().__init__(ctx, u_rect=GAME_RECT)
        self._saliency: Program | None = None

    def render(self, src: moderngl.TextureArray, dst: Target, first: int = 0, frames: int = 1,
               saliency: moderngl.TextureArray | None = None) -> None:
        """Layers ``0 .. frames-1`` of ``src`` into frames ``first ..`` of ``dst``; ``saliency``:
        the same layers of an (84, 84) RG texture array (actor, critic in [0, 1], bilinear)
        blended over them in :data:`~gpurender.render.layout.SALIENCY_ACTOR` and
        :data:`~gpurender.render.layout.SALIENCY_CRITIC`, each with opacity ``SALIENCY_ALPHA`` x
        its map: their colours mixed by those weights, laid over with their sum (at most 1)."""
        program = self.program
        if saliency is not None:
            if self._saliency is None:
                self._saliency = self.own(Program(self.ctx, self.shader, ("SALIENCY",), u_rect=GAME_RECT,
                                                  u_frame_size=(FRAME_W, FRAME_H), u_actor_colour=SALIENCY_ACTOR,
                                                  u_critic_colour=SALIENCY_CRITIC, u_alpha=SALIENCY_ALPHA))
            program = self._saliency
            saliency.use(Unit.SALIENCY)
        dst.use()
        width, height = dst.fbo.size
        program.set(u_frame_size=(width, height // dst.tiles), u_tiles=dst.tiles, u_tile0=first)
        src.use(Unit.SCREENS)
        self.ctx.disable(moderngl.BLEND)
        program.draw(frames)


def items_texture(ctx: moderngl.Context, items: Items) -> tuple[moderngl.Texture, int]:
    """Upload item descriptors as a ``t_items`` texture; -> (texture, item count)."""
    data = items.texture_data()
    tex = ctx.texture((data.shape[1], 4), 4, data.tobytes(), dtype="f4")
    tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
    return tex, data.shape[1]


class ItemRange(NamedTuple):
    """What an item pass reads: items ``first .. first+count-1`` of an :func:`items_texture`,
    with the frames' value slots (one row per frame) and, for text, their character codes."""

    items: moderngl.Texture
    first: int
    count: int
    values: moderngl.Texture | None = None
    """``t_values``; None where no item is bound to a value."""
    chars: moderngl.Texture | None = None
    """``t_chars`` (text only)."""


class ItemsPass(TiledPass):
    """Instanced items (one quad per item per frame) described by an item texture: every item of
    every frame in one draw call."""

    blend: tuple[int, int] = BLEND_OVER

    def render(self, src: ItemRange, dst: Target, first: int = 0, frames: int = 1) -> None:
        """``src``'s items, for ``frames`` frames, into frames ``first ..`` of ``dst``."""
        if src.count <= 0:
            return
        self._into(dst, first)
        src.items.use(Unit.ITEMS)
        if src.values is not None:
            src.values.use(Unit.VALUES)
        if src.chars is not None:
            src.chars.use(Unit.CHARS)
        self.program.set(u_items=src.count, u_item0=src.first)
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = self.blend
        self.program.draw(frames * src.count)


class RectsPass(ItemsPass):
    """Flat rectangles: backgrounds, probability bars, highlights, history cells and bars."""

    shader = "rects"

    def __init__(self, ctx: moderngl.Context) -> None:
        super().__init__(ctx, u_palette=[(*c, 1.0) for c in PALETTE])


class EdgesPass(ItemsPass):
    """Network edges with their glow, added up."""

    shader = "edges"
    blend = BLEND_ADD

    def __init__(self, ctx: moderngl.Context) -> None:
        super().__init__(ctx, u_half_width=2.5, u_negative=ATTRIBUTION_AGAINST)


class NodesPass(ItemsPass):
    """Network nodes with their analytic glow. Each node's quad covers only the pixels its disc,
    halo and ring can draw at its level (the same pixels as quads of the full glow extent, which
    ``fit_quads = False`` draws)."""

    shader = "nodes"
    GLOW_EXTENT = 2.2
    """The largest quad half-size, in node radii."""

    def __init__(self, ctx: moderngl.Context) -> None:
        super().__init__(ctx, u_glow_extent=self.GLOW_EXTENT, u_fit_quads=True, u_negative=ATTRIBUTION_AGAINST)

    @property
    def fit_quads(self) -> bool:
        return bool(self.program.program["u_fit_quads"].value)

    @fit_quads.setter
    def fit_quads(self, on: bool) -> None:
        self.program.set(u_fit_quads=on)


class TextPass(ItemsPass):
    """Monospaced glyphs from the glyph atlas, which this pass uploads and owns."""

    shader = "text"
    MAX_FONTS = 8
    """Length of the shader's ``u_fonts`` array."""

    def __init__(self, ctx: moderngl.Context, atlas: GlyphAtlas) -> None:
        h, w = atlas.image.shape
        fonts = [(f.origin_y, f.cell_w, f.cell_h, 0.0) for f in atlas.fonts.values()]
        super().__init__(ctx, u_fonts=fonts + [(0.0, 0.0, 0.0, 0.0)] * (self.MAX_FONTS - len(fonts)),
                         u_atlas_size=(w, h))
        self.atlas = atlas
        self.t_atlas = self.own(ctx.texture((w, h), 1, atlas.image.tobytes(), alignment=1))
        self.t_atlas.filter = (moderngl.NEAREST, moderngl.NEAREST)

    def render(self, src: ItemRange, dst: Target, first: int = 0, frames: int = 1) -> None:
        self.t_atlas.use(Unit.ATLAS)
        super().render(src, dst, first, frames)


# -- after the frame --------------------------------------------------------------------------------


class I420Pass(Pass):
    """RGB frames -> planar I420 (BT.601, limited range) in an R8 target of 1.5-frame-tall tiles
    (810 rows for 960 x 540), each tile read row by row being one frame's Y, U and V planes
    (``shaders/yuv420.glsl``): Y from one texel, U and V from the mean of each 2x2 block; a
    frame's bytes do not depend on its tile. ``frame_size``: the frames' width and height."""

    def __init__(self, ctx: moderngl.Context, frame_size: tuple[int, int] = (FRAME_W, FRAME_H)) -> None:
        super().__init__(ctx)
        size = dict(u_frame_size=frame_size)
        self.luma = self.own(Program(ctx, "yuv420", **size))
        self.chroma = self.own(Program(ctx, "yuv420", ("CHROMA",), **size))

    def render(self, src: Target, dst: Target, frames: int = 1) -> None:
        """Frames ``0 .. frames-1`` of ``src`` (RGB, nearest-filtered) into the same tiles of
        ``dst`` (as many tiles, each 1.5 frames tall)."""
        if src.tiles != dst.tiles:
            raise ValueError(f"the I420 target has {dst.tiles} tiles, the frames {src.tiles}")
        dst.use()
        for prog in (self.luma, self.chroma):
            prog.set(u_tiles=src.tiles)
        src.texture.use(Unit.RGB)
        self.luma.draw(frames)
        self.chroma.draw(4 * frames)


class PresentPass(Pass):
    """One frame tile scaled (bilinear) into a rectangle of another framebuffer, black around it:
    the preview window's blit (``shaders/present.glsl``)."""

    def __init__(self, ctx: moderngl.Context) -> None:
        super().__init__(ctx)
        self.program = self.own(Program(ctx, "present"))
        self.sampler = self.own(ctx.sampler(filter=(moderngl.LINEAR, moderngl.LINEAR), repeat_x=False,
                                             repeat_y=False))

    def render(self, src: Target, dst: moderngl.Framebuffer, size: tuple[int, int],
               rect: tuple[int, int, int, int] | None, tile: int = 0) -> None:
        """Clear ``dst`` (``size`` pixels: a window's framebuffer does not know its own size) and
        draw ``src``'s tile ``tile`` into ``rect`` (x, y, w, h; None: nothing, the window is
        minimised)."""
        fb_w, fb_h = size
        dst.use()
        self.ctx.viewport = (0, 0, fb_w, fb_h)
        self.ctx.disable(moderngl.BLEND)
        self.ctx.clear(0.0, 0.0, 0.0, 1.0)
        if rect is None:
            return
        x, y, w, h = rect
        self.program.set(u_uv_rect=src.uv_rect(tile),
                         u_viewport_rect=(2 * x / fb_w - 1, 2 * y / fb_h - 1,
                                          2 * (x + w) / fb_w - 1, 2 * (y + h) / fb_h - 1))
        self.sampler.texture = src.texture
        self.sampler.use(Unit.FRAME)
        self.program.draw(1)
        self.sampler.clear(Unit.FRAME)


class ComposePass(Pass):
    """Frames of a tiled target, each scaled into its own rectangle of a one-frame target of any
    size (``shaders/compose.glsl``), in one instanced draw: the progress video's grid and its
    full-screen milestones. Above 1:1 a whole-number scale samples the nearest texel (crisp) and
    others bilinear; below it each pixel is the mean of 2 x 2 bilinear taps (an area filter)."""

    MAX_FRAMES = 16
    """Rectangles per draw (the shader's arrays)."""

    def __init__(self, ctx: moderngl.Context) -> None:
        super().__init__(ctx)
        self.program = self.own(Program(ctx, "compose"))
        self.linear = self.own(ctx.sampler(filter=(moderngl.LINEAR, moderngl.LINEAR), repeat_x=False, repeat_y=False))
        self.nearest = self.own(ctx.sampler(filter=(moderngl.NEAREST, moderngl.NEAREST), repeat_x=False,
                                            repeat_y=False))

    def render(self, src: Target, dst: Target, placements: Sequence[tuple[int, tuple[float, float, float, float]]],
               scale: float) -> None:
        """Draw ``(tile, (x, y, w, h))`` placements: ``src``'s frame ``tile`` into that rectangle of
        ``dst``'s (only) frame, ``y`` from its top; ``scale``: the rectangles' size over a frame's
        (one for all, it picks the filter)."""
        if not placements:
            return
        if len(placements) > self.MAX_FRAMES:
            raise ValueError(f"{len(placements)} frames exceed the {self.MAX_FRAMES} of one compose draw")
        width, height = dst.fbo.size
        src_w, src_h = src.fbo.size
        pad = [(0.0, 0.0, 0.0, 0.0)] * (self.MAX_FRAMES - len(placements))
        taps = 1 if scale >= 1 else 2
        self.program.set(u_dst_size=(width, height), u_tiles=src.tiles, u_taps=taps,
                         u_tap_offset=(0.25 / (scale * src_w), 0.25 / (scale * src_h)),
                         u_rects=[tuple(map(float, rect)) for _, rect in placements] + pad,
                         u_src_tiles=[int(tile) for tile, _ in placements] + [0] * len(pad))
        dst.use()
        self.ctx.disable(moderngl.BLEND)
        sampler = self.nearest if scale >= 1 and float(scale).is_integer() else self.linear
        sampler.texture = src.texture
        sampler.use(Unit.FRAME)
        self.program.draw(len(placements))
        sampler.clear(Unit.FRAME)


class TextLine(NamedTuple):
    """One line of a :class:`TextBoxPass`: its font and its colours, each from a column on."""

    font: str
    """A font of the glyph atlas (``"head"``, ``"body"``)."""
    colours: tuple[tuple[int, RGBA], ...]
    """(first column, RGBA) spans, in column order; the first starts at column 0."""


class TextBoxPass(Pass):
    """A centred box of monospaced text lines over a copy of a frame, drawn by a frame renderer's
    own rect and text passes and glyph atlas (the preview's help overlay).

    The box's geometry and colours are fixed when it is made; its characters are :attr:`text`."""

    PAD, LINE_GAP = 14, 3
    FILL: RGBA = (0.03, 0.035, 0.06, 0.94)
    RULE: RGBA = RULE

    def __init__(self, rects: RectsPass, text: TextPass, lines: Sequence[TextLine], width: int) -> None:
        super().__init__(text.ctx)
        self.rects_pass, self.text_pass = rects, text
        self.width, self.n_lines = width, len(lines)
        fonts = text.atlas.fonts
        line_h = max(fonts[line.font].cell_h for line in lines) + self.LINE_GAP
        box_w = width * max(fonts[line.font].cell_w for line in lines) + 2 * self.PAD
        box_h = len(lines) * line_h + 2 * self.PAD
        x0, y0 = (FRAME_W - box_w) // 2, (FRAME_H - box_h) // 2
        rect_items, glyph_items = Items(), Items()
        rect_items.add((x0, y0, box_w, box_h), self.FILL)
        rect_items.add((x0, y0, box_w, 1), self.RULE)
        rect_items.add((x0, y0 + box_h - 1, box_w, 1), self.RULE)
        for i, line in enumerate(lines):
            font, y = fonts[line.font], y0 + self.PAD + i * line_h
            for c in range(width):
                colour = [rgba for start, rgba in line.colours if c >= start][-1]
                glyph_items.add((x0 + self.PAD + c * font.cell_w, y, font.index, 0), colour)
        self.rects = self.own(items_texture(self.ctx, rect_items)[0]), len(rect_items)
        self.glyphs = self.own(items_texture(self.ctx, glyph_items)[0]), len(glyph_items)
        self.t_chars = self.own(self.ctx.texture((len(glyph_items), 1), 1, dtype="u1", alignment=1))
        self.t_chars.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self._text: tuple[str, ...] = ()
        self.text = [""] * len(lines)

    @property
    def text(self) -> tuple[str, ...]:
        """The lines shown, each cut or padded to the box's width."""
        return self._text

    @text.setter
    def text(self, lines: Sequence[str]) -> None:
        lines = tuple(line[: self.width].ljust(self.width) for line in lines[: self.n_lines])
        lines += (" " * self.width,) * (self.n_lines - len(lines))
        if lines != self._text:
            self.t_chars.write("".join(lines).encode("ascii", "replace"))
            self._text = lines

    def render(self, src: Target, dst: Target) -> None:
        """Copy ``src``'s first frame into ``dst`` (one frame) and draw the box over it."""
        self.ctx.copy_framebuffer(dst.fbo, src.fbo)
        tex, count = self.rects
        self.rects_pass.render(ItemRange(tex, 0, count), dst)
        tex, count = self.glyphs
        self.text_pass.render(ItemRange(tex, 0, count, chars=self.t_chars), dst)
        self.ctx.disable(moderngl.BLEND)

