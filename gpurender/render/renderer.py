"""Draw batches of analytics frames with ModernGL into one tiled offscreen target.

Per pass, up to ``max_tiles`` frames are drawn by a few instanced draw calls for the whole batch
(game, live rects, edges, nodes, live text: the passes of :mod:`gpurender.render.passes`) over
per-milestone panel images that hold what never changes within a video. On a GPU one more pass
converts the frames to I420, so reading back 1.5
bytes per pixel hands the encoder its planes directly; a software renderer reads the panel halves
as RGBA instead and the encoder threads convert them (:class:`gpurender.encode.I420Converter`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import moderngl
import numpy as np

from gpurender.render.atlas import GlyphAtlas
from gpurender.render.context import create_headless_context, is_software, renderer_name
from gpurender.render.layout import BACKGROUND, FACES, FRAME_H, FRAME_W, PANEL_W, PanelLayout, PanelSpec
from gpurender.render.passes import (
    EdgesPass,
    GamePass,
    I420Pass,
    ItemRange,
    NodesPass,
    RectsPass,
    Target,
    TextPass,
    items_texture,
)

YUV_ROWS = FRAME_H * 3 // 2
GL_TEXTURE_2D = 0x0DE1


class FramePasses(NamedTuple):
    """The passes a :class:`FrameRenderer` draws its frames with, in drawing order, and the I420
    conversion after them."""

    game: GamePass
    rects: RectsPass
    edges: EdgesPass
    nodes: NodesPass
    text: TextPass
    i420: I420Pass


@dataclass
class _LayoutGPU:
    layout: PanelLayout
    items: dict[str, moderngl.Texture]
    counts: dict[str, int]


def _gl_function(name: str, *argtypes: type) -> Callable[..., None] | None:
    """A GL entry point of the current EGL context as a ctypes function that RELEASES the GIL
    while it runs (ModernGL's calls hold it), or None where EGL has no such function."""
    try:
        egl = ctypes.CDLL("libEGL.so.1")
    except OSError:
        return None
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    addr = egl.eglGetProcAddress(name.encode())
    return ctypes.CFUNCTYPE(None, *argtypes)(addr) if addr else None


def _copy_image_fn(ctx: moderngl.Context) -> Callable[..., None] | None:
    """``glCopyImageSubData`` (GL 4.3) through EGL, or None. ModernGL has no texture-to-texture
    region copy; on llvmpipe this one is a memcpy, cheaper than clearing the same area."""
    if ctx.version_code < 430:
        return None
    args = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int] * 2
    return _gl_function("glCopyImageSubData", *args, ctypes.c_int, ctypes.c_int, ctypes.c_int)


class FrameRenderer:
    """Owns the GL context (or borrows one) and every GL resource; ``close()`` releases them.

    Beyond drawing (:meth:`begin`, :meth:`draw`) and reading (:meth:`read_yuv`,
    :meth:`read_panels`, :meth:`read_rgb`), what others may build on: :attr:`passes` (e.g. the
    rect and text passes with the glyph atlas, for an overlay), :attr:`frame_target` (the drawn
    frames) and :attr:`i420_target`."""

    def __init__(self, ctx: moderngl.Context | None = None, max_tiles: int = 16) -> None:
        self._own_ctx = ctx is None
        self._current = False  # whether begin() made our own context current (close() undoes it)
        self.ctx = ctx or create_headless_context()
        limit = self.ctx.info["GL_MAX_TEXTURE_SIZE"]
        self.max_tiles = max(1, min(max_tiles, limit // YUV_ROWS))
        self.renderer = renderer_name(self.ctx)
        self.software = is_software(self.renderer)
        """Mesa's CPU rasterisers: frames are better read as RGBA and converted by the encoders
        (:meth:`read_panels` + :meth:`gpurender.encode.I420Converter.compose`)."""
        ctx = self.ctx
        self.atlas = GlyphAtlas(FACES)
        self.passes = FramePasses(GamePass(ctx), RectsPass(ctx), EdgesPass(ctx), NodesPass(ctx),
                                  TextPass(ctx, self.atlas), I420Pass(ctx))
        """The passes frames are drawn with (released by :meth:`close`)."""
        t = self.max_tiles
        self.t_rgb = ctx.texture((FRAME_W, FRAME_H * t), 4)
        self.t_rgb.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.fbo_rgb = ctx.framebuffer([self.t_rgb])
        self.t_yuv = ctx.texture((FRAME_W, YUV_ROWS * t), 1)
        self.fbo_yuv = ctx.framebuffer([self.t_yuv])
        self.t_screens = ctx.texture_array((160, 210, t), 3, alignment=1)
        self.t_screens.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self._t_saliency: moderngl.TextureArray | None = None  # made when saliency is first drawn
        self._dyn: dict[str, moderngl.Texture] = {}
        self._layouts: dict[tuple, _LayoutGPU] = {}
        # Items that never change within a video are drawn once per milestone into a panel image
        # that is copied into each tile (an own EGL context is needed for the copy function);
        # otherwise they are drawn with every frame. Same pixels either way (tested).
        self._copy_image = _copy_image_fn(ctx) if self._own_ctx else None
        self._copy_tile_fn = self._copy_image
        # Waiting for the rasteriser without the GIL: on llvmpipe a pass renders for tens of ms,
        # and ModernGL's own finish/read would hold the GIL all that time, stalling the encoder
        # threads (their OpenCV and FFmpeg calls need it between frames)
        self._gl_finish = _gl_function("glFinish") if self._own_ctx else None
        self._panels: dict[tuple, moderngl.Texture] = {}
        self._scratch: moderngl.Framebuffer | None = None

    @property
    def frame_target(self) -> Target:
        """The frames drawn by the latest pass: ``max_tiles`` tiles of one RGBA framebuffer (tile
        ``k`` holds frame ``k``). Read it, copy it or draw over copies of it; draw into it only
        through :meth:`draw`."""
        return Target(self.fbo_rgb, self.max_tiles)

    @property
    def i420_target(self) -> Target:
        """Where :meth:`read_yuv` converts the frames to: one 810-row I420 tile per frame tile."""
        return Target(self.fbo_yuv, self.max_tiles)

    # -- layouts --------------------------------------------------------------------------------

    def layout(self, spec: PanelSpec) -> PanelLayout:
        """The (cached) layout for this architecture and action set."""
        return self._gpu_layout(spec).layout

    def _gpu_layout(self, spec: PanelSpec) -> _LayoutGPU:
        key = spec.layout_key
        if key not in self._layouts:
            layout = PanelLayout(spec, self.atlas)
            items, counts = {}, {}
            for kind in ("rects", "glyphs", "nodes", "edges"):
                items[kind], counts[kind] = items_texture(self.ctx, getattr(layout, kind))
            self._layouts[key] = _LayoutGPU(layout, items, counts)
        return self._layouts[key]

    def _dynamic(self, name: str, width: int, components: int, dtype: str) -> moderngl.Texture:
        tex = self._dyn.get(name)
        if tex is None or tex.width != width:
            if tex is not None:
                tex.release()
            tex = self.ctx.texture((width, self.max_tiles), components, dtype=dtype, alignment=1)
            tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
            self._dyn[name] = tex
        return tex

    # -- drawing --------------------------------------------------------------------------------

    @property
    def static_copy(self) -> bool:
        """Whether fixed items come from per-milestone panel images (else drawn every frame)."""
        return self._copy_image is not None

    @static_copy.setter
    def static_copy(self, on: bool) -> None:
        self._copy_image = (_copy_image_fn(self.ctx) if self._own_ctx else None) if on else None

    def make_current(self) -> None:
        """Make the renderer's own context current on this thread (another context in the
        process may have been made current); a borrowed one is the caller's to manage."""
        if self._own_ctx and not self._current:
            self.ctx.__enter__()
            self._current = True

    def begin(self, n: int | None = None, game: bool = True) -> None:
        """Start a pass of ``n`` frames (all tiles when None): make the context current on this
        thread and, unless the panel images cover the tiles (:attr:`static_copy`), clear them
        (``game=False``: only their panel halves; the game half will not be drawn or read)."""
        self.make_current()
        self.fbo_rgb.use()
        if self.static_copy:
            return  # draw() copies a panel image over each left half; the opaque game quad covers the right
        rows = FRAME_H * (self.max_tiles if n is None else min(n, self.max_tiles))
        self.fbo_rgb.clear(*BACKGROUND, 1.0, viewport=(0, 0, FRAME_W if game else PANEL_W, rows))

    def _fixed_items(self, gl: _LayoutGPU, dst: Target, first: int, frames: int, values: moderngl.Texture | None,
                     chars: moderngl.Texture) -> None:
        """The panel's fixed items: the rects, then the text, that look the same in every frame
        (bound to no value: ``values`` may be None)."""
        self.passes.rects.render(ItemRange(gl.items["rects"], 0, gl.layout.n_static_rects, values), dst, first, frames)
        self.passes.text.render(ItemRange(gl.items["glyphs"], 0, gl.layout.n_static_slots, values, chars), dst, first,
                                frames)

    def _panel_image(self, gl: _LayoutGPU, chars: np.ndarray) -> moderngl.Texture:
        """The fixed part of one milestone's panel (its fixed text is in ``chars``), drawn once."""
        fixed = np.ascontiguousarray(chars[: gl.layout.n_static_slots], np.uint8)
        key = (id(gl), fixed.tobytes())
        tex = self._panels.get(key)
        if tex is None:
            if self._scratch is None:
                self._scratch = self.ctx.simple_framebuffer((FRAME_W, FRAME_H), 4)
            t_chars = self._dynamic("chars", len(chars), 1, "u1")
            t_chars.write(np.ascontiguousarray(chars, np.uint8).tobytes(), viewport=(0, 0, len(chars), 1))
            scratch = Target(self._scratch)
            scratch.use()
            self._scratch.clear(*BACKGROUND, 1.0)
            self._fixed_items(gl, scratch, 0, 1, None, t_chars)
            data = self._scratch.read(viewport=(0, 0, PANEL_W, FRAME_H), components=4, alignment=1)
            tex = self._panels[key] = self.ctx.texture((PANEL_W, FRAME_H), 4, data, alignment=1)
        return tex

    def _saliency_maps(self, maps: np.ndarray) -> moderngl.TextureArray:
        """Upload (n, 2, 84, 84) actor and critic maps into layers ``0 .. n-1`` of the saliency
        texture array (RG half floats, bilinear, clamped to the edge)."""
        if self._t_saliency is None:
            self._t_saliency = self.ctx.texture_array((84, 84, self.max_tiles), 2, dtype="f2", alignment=1)
            self._t_saliency.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self._t_saliency.repeat_x = self._t_saliency.repeat_y = False
        rg = np.ascontiguousarray(np.asarray(maps, np.float16).transpose(0, 2, 3, 1))
        self._t_saliency.write(rg.tobytes(), viewport=(0, 0, 0, 84, 84, len(maps)))
        return self._t_saliency

    def draw(self, spec: PanelSpec, values: np.ndarray, chars: np.ndarray, screens: np.ndarray | None,
             tile0: int = 0, saliency: np.ndarray | None = None) -> None:
        """Draw ``len(values)`` frames of one layout into tiles ``tile0 ...``; ``screens=None``
        leaves the game half undrawn (on a software renderer the encoders add it:
        :meth:`gpurender.encode.I420Converter.compose`). ``saliency``: (n, 2, 84, 84) actor and
        critic maps in [0, 1] drawn over the screens (:class:`~gpurender.render.passes.GamePass`)."""
        n = len(values)
        if tile0 + n > self.max_tiles:
            raise ValueError(f"{tile0 + n} frames exceed the {self.max_tiles} tiles of a pass")
        gl = self._gpu_layout(spec)
        ctx = self.ctx
        panels = [self._panel_image(gl, c) for c in chars] if self.static_copy else []
        t_values = self._dynamic("values", values.shape[1], 1, "f4")
        t_values.write(np.ascontiguousarray(values, np.float32).tobytes(), viewport=(0, 0, values.shape[1], n))
        t_chars = self._dynamic("chars", chars.shape[1], 1, "u1")
        t_chars.write(np.ascontiguousarray(chars, np.uint8).tobytes(), viewport=(0, 0, chars.shape[1], n))
        if screens is not None:
            self.t_screens.write(np.ascontiguousarray(screens, np.uint8).tobytes(), viewport=(0, 0, 0, 160, 210, n))
        dst, p = self.frame_target, self.passes
        if self.static_copy:
            for k, panel in enumerate(panels):
                self._copy_image(panel.glo, GL_TEXTURE_2D, 0, 0, 0, 0, self.t_rgb.glo, GL_TEXTURE_2D, 0,
                                 0, (tile0 + k) * FRAME_H, 0, PANEL_W, FRAME_H, 1)
        else:
            self._fixed_items(gl, dst, tile0, n, t_values, t_chars)
        if screens is not None:
            t_sal = self._saliency_maps(saliency) if saliency is not None else None
            p.game.render(self.t_screens, dst, tile0, n, saliency=t_sal)
        lay, items, counts = gl.layout, gl.items, gl.counts
        live = (("rects", p.rects, lay.n_static_rects, None), ("edges", p.edges, 0, None),
                ("nodes", p.nodes, 0, None), ("glyphs", p.text, lay.n_static_slots, t_chars))
        for kind, pass_, first, kind_chars in live:
            pass_.render(ItemRange(items[kind], first, counts[kind] - first, t_values, kind_chars), dst, tile0, n)
        ctx.disable(moderngl.BLEND)

    def copy_tile(self, tile: int, dst: moderngl.Texture, x: int, y: int) -> bool:
        """Copy frame ``tile`` of the latest pass, unscaled, into ``dst`` (an RGBA texture whose
        rows are stored top row first, as the tiles are) with its top-left corner at ``x, y``;
        False (nothing copied) where the context has no image copy (GL < 4.3, a borrowed one)."""
        if self._copy_tile_fn is None:
            return False
        self._copy_tile_fn(self.t_rgb.glo, GL_TEXTURE_2D, 0, 0, tile * FRAME_H, 0, dst.glo, GL_TEXTURE_2D, 0,
                           x, y, 0, FRAME_W, FRAME_H, 1)
        return True

    def finish(self) -> None:
        """Wait until every GL command issued so far is done, letting other Python threads run."""
        if self._gl_finish is not None:
            self._gl_finish()
        else:
            self.ctx.finish()

    def read_yuv(self, n: int) -> np.ndarray:
        """Convert tiles ``0..n-1`` to I420 on the GPU and read them: (n, 810, 960) uint8."""
        self.passes.i420.render(self.frame_target, self.i420_target, n)
        self.finish()
        # straight into an array: faster than reading into new bytes or through a pixel-pack
        # buffer (benchmarks/gpu_pass_parts.py)
        frames = np.empty((n, YUV_ROWS, FRAME_W), np.uint8)
        self.fbo_yuv.read_into(frames, viewport=(0, 0, FRAME_W, YUV_ROWS * n), components=1, alignment=1)
        return frames

    def read_panels(self, n: int) -> np.ndarray:
        """The left (analytics) half of tiles ``0..n-1``: (n, 540, 480, 4) uint8 RGBA."""
        self.finish()
        data = self.fbo_rgb.read(viewport=(0, 0, PANEL_W, FRAME_H * n), components=4, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(n, FRAME_H, PANEL_W, 4)

    def read_rgba(self, n: int) -> np.ndarray:
        """Tiles ``0..n-1`` whole: (n, 540, 960, 4) uint8 RGBA, rows top-down."""
        self.finish()
        data = self.fbo_rgb.read(viewport=(0, 0, FRAME_W, FRAME_H * n), components=4, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(n, FRAME_H, FRAME_W, 4)

    def read_rgb(self, n: int) -> np.ndarray:
        """Tiles ``0..n-1`` as (n, 540, 960, 3) uint8 RGB, rows top-down."""
        data = self.fbo_rgb.read(viewport=(0, 0, FRAME_W, FRAME_H * n), components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(n, FRAME_H, FRAME_W, 3)

    def close(self) -> None:
        for tex in (self.t_rgb, self.t_yuv, self.t_screens, *self._dyn.values()):
            tex.release()
        if self._t_saliency is not None:
            self._t_saliency.release()
        for gl in self._layouts.values():
            for tex in gl.items.values():
                tex.release()
        for tex in self._panels.values():
            tex.release()
        if self._scratch is not None:
            self._scratch.release()
        self.fbo_rgb.release()
        self.fbo_yuv.release()
        for pass_ in self.passes:
            pass_.release()
        if self._own_ctx:
            if self._current:
                self.ctx.__exit__(None, None, None)  # leave no released context current
            self.ctx.release()

    def __enter__(self) -> FrameRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
