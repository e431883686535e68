"""Draw batches of analytics frames with ModernGL into one tiled offscreen target.

Per pass, up to ``max_tiles`` frames are drawn by a few instanced draw calls for the whole batch
(game, live rects, edges, nodes, live text) over per-milestone panel images that hold what never
changes within a video. On a GPU one more pass converts the frames to I420, so reading back 1.5
bytes per pixel hands the encoder its planes directly; a software renderer reads the panel halves
as RGBA instead and the encoder threads convert them (:class:`gpurender.encode.I420Converter`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import moderngl
import numpy as np

from gpurender.render.atlas import GlyphAtlas
from gpurender.render.context import create_headless_context, is_software, renderer_name
from gpurender.render.layout import (
    BACKGROUND,
    FACES,
    FRAME_H,
    FRAME_W,
    GAME_RECT,
    PALETTE,
    PANEL_W,
    Items,
    PanelLayout,
    PanelSpec,
)
from gpurender.render.shaders import load_program

YUV_ROWS = FRAME_H * 3 // 2
UNIT_VALUES, UNIT_ITEMS, UNIT_CHARS, UNIT_ATLAS, UNIT_SCREENS, UNIT_RGB = range(6)


GL_TEXTURE_2D = 0x0DE1
BLEND_OVER = (moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA)


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
    region copy; on llvmpipe this one is a memcpy (0.25 ms per panel, where clearing the same
    area costs 0.85 ms and drawing it several ms)."""
    if ctx.version_code < 430:
        return None
    args = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int] * 2
    return _gl_function("glCopyImageSubData", *args, ctypes.c_int, ctypes.c_int, ctypes.c_int)


class FrameRenderer:
    """Owns the GL context (or borrows one) and every GL resource; ``close()`` releases them."""

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
        self.programs = {name: load_program(self.ctx, name)
                         for name in ("game", "rects", "edges", "nodes", "text", "yuv420")}
        self.programs["chroma"] = load_program(self.ctx, "yuv420", ("CHROMA",))
        self.vaos = {name: self.ctx.vertex_array(prog, []) for name, prog in self.programs.items()}
        self.atlas = GlyphAtlas(FACES)
        h, w = self.atlas.image.shape
        self.t_atlas = self.ctx.texture((w, h), 1, self.atlas.image.tobytes(), alignment=1)
        self.t_atlas.filter = (moderngl.NEAREST, moderngl.NEAREST)
        t = self.max_tiles
        self.t_rgb = self.ctx.texture((FRAME_W, FRAME_H * t), 4)
        self.t_rgb.filter = (moderngl.NEAREST, moderngl.NEAREST)
        # chroma reads the same texture bilinearly: one fetch on a 2x2 block's corner = its mean
        self.s_rgb_linear = self.ctx.sampler(texture=self.t_rgb, filter=(moderngl.LINEAR, moderngl.LINEAR))
        self.fbo_rgb = self.ctx.framebuffer([self.t_rgb])
        self.t_yuv = self.ctx.texture((FRAME_W, YUV_ROWS * t), 1)
        self.fbo_yuv = self.ctx.framebuffer([self.t_yuv])
        self.t_screens = self.ctx.texture_array((160, 210, t), 3, alignment=1)
        self.t_screens.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self._dyn: dict[str, moderngl.Texture] = {}
        self._layouts: dict[tuple, _LayoutGPU] = {}
        # Items that never change within a video are drawn once per milestone into a panel image
        # that is copied into each tile (an own EGL context is needed for the copy function);
        # otherwise they are drawn with every frame. Same pixels either way (tested).
        self._copy_image = _copy_image_fn(self.ctx) if self._own_ctx else None
        # Waiting for the rasteriser without the GIL: on llvmpipe a pass renders for tens of ms,
        # and ModernGL's own finish/read would hold the GIL all that time, stalling the encoder
        # threads (their OpenCV and FFmpeg calls need it between frames)
        self._gl_finish = _gl_function("glFinish") if self._own_ctx else None
        self._panels: dict[tuple, moderngl.Texture] = {}
        self._scratch: moderngl.Framebuffer | None = None
        fonts = [(f.origin_y, f.cell_w, f.cell_h, 0.0) for f in self.atlas.fonts.values()]
        fonts += [(0.0, 0.0, 0.0, 0.0)] * (8 - len(fonts))
        self.programs["text"]["u_fonts"].value = fonts
        for _name, prog in self.programs.items():
            for uniform, unit in (("t_values", UNIT_VALUES), ("t_items", UNIT_ITEMS), ("t_chars", UNIT_CHARS),
                                  ("t_atlas", UNIT_ATLAS), ("t_screens", UNIT_SCREENS), ("t_rgb", UNIT_RGB)):
                if uniform in prog:
                    prog[uniform].value = unit
            if "u_atlas_size" in prog:
                prog["u_atlas_size"].value = (w, h)
            if "u_frame_size" in prog:
                prog["u_frame_size"].value = (FRAME_W, FRAME_H)
            if "u_tiles" in prog:
                prog["u_tiles"].value = t
        self.programs["rects"]["u_palette"].value = [(*c, 1.0) for c in PALETTE]
        self.programs["game"]["u_rect"].value = GAME_RECT
        self.programs["game"]["u_screen_size"].value = (160.0, 210.0)
        self.programs["edges"]["u_half_width"].value = 2.5
        self.programs["nodes"]["u_glow_extent"].value = 2.2

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
                items[kind], counts[kind] = self.items_texture(getattr(layout, kind))
            self._layouts[key] = _LayoutGPU(layout, items, counts)
        return self._layouts[key]

    def items_texture(self, items: Items) -> tuple[moderngl.Texture, int]:
        """Upload item descriptors as a ``t_items`` texture; -> (texture, item count)."""
        data = items.texture_data()
        tex = self.ctx.texture((data.shape[1], 4), 4, data.tobytes(), dtype="f4")
        tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
        return tex, data.shape[1]

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

    def begin(self, n: int | None = None, game: bool = True) -> None:
        """Start a pass of ``n`` frames (all tiles when None): make the context current on this
        thread and, unless the panel images cover the tiles (:attr:`static_copy`), clear them
        (``game=False``: only their panel halves; the game half will not be drawn or read)."""
        if self._own_ctx and not self._current:
            self.ctx.__enter__()  # another context in the process may have been made current
            self._current = True
        self.fbo_rgb.use()
        if self.static_copy:
            return  # draw() copies a panel image over each left half; the opaque game quad covers the right
        rows = FRAME_H * (self.max_tiles if n is None else min(n, self.max_tiles))
        self.fbo_rgb.clear(*BACKGROUND, 1.0, viewport=(0, 0, FRAME_W if game else PANEL_W, rows))

    def draw_items(self, items: moderngl.Texture, prog_name: str, first: int, count: int, frames: int,
                   blend: tuple | None) -> None:
        """Instanced draw of items ``first .. first+count-1`` of an :meth:`items_texture` with
        program ``prog_name``, for ``frames`` frames (tiles from :meth:`set_tiles`'s ``tile0``)."""
        if count <= 0:
            return
        prog = self.programs[prog_name]
        items.use(UNIT_ITEMS)
        prog["u_items"].value = count
        prog["u_item0"].value = first
        if blend is None:
            self.ctx.disable(moderngl.BLEND)
        else:
            self.ctx.enable(moderngl.BLEND)
            self.ctx.blend_func = blend
        self.vaos[prog_name].render(moderngl.TRIANGLE_STRIP, vertices=4, instances=frames * count)

    def _fixed_items(self, gl: _LayoutGPU, frames: int) -> None:
        """The panel's fixed items: the rects, then the text, that look the same in every frame."""
        self.draw_items(gl.items["rects"], "rects", 0, gl.layout.n_static_rects, frames, BLEND_OVER)
        self.draw_items(gl.items["glyphs"], "text", 0, gl.layout.n_static_slots, frames, BLEND_OVER)

    def set_tiles(self, tiles: int, tile0: int) -> None:
        """Every program's target layout: ``tiles`` frames tall, drawing from tile ``tile0``."""
        for prog in self.programs.values():
            if "u_tile0" in prog:
                prog["u_tile0"].value = tile0
            if "u_tiles" in prog:
                prog["u_tiles"].value = tiles

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
            t_chars.use(UNIT_CHARS)
            self.t_atlas.use(UNIT_ATLAS)
            self._scratch.use()
            self._scratch.clear(*BACKGROUND, 1.0)
            self.ctx.viewport = (0, 0, FRAME_W, FRAME_H)
            self.set_tiles(1, 0)
            self._fixed_items(gl, 1)
            self.set_tiles(self.max_tiles, 0)
            data = self._scratch.read(viewport=(0, 0, PANEL_W, FRAME_H), components=4, alignment=1)
            tex = self._panels[key] = self.ctx.texture((PANEL_W, FRAME_H), 4, data, alignment=1)
        return tex

    def draw(self, spec: PanelSpec, values: np.ndarray, chars: np.ndarray, screens: np.ndarray | None,
             tile0: int = 0) -> None:
        """Draw ``len(values)`` frames of one layout into tiles ``tile0 ...``; ``screens=None``
        leaves the game half undrawn (on a software renderer the encoders add it:
        :meth:`gpurender.encode.I420Converter.compose`)."""
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
        t_values.use(UNIT_VALUES)
        t_chars.use(UNIT_CHARS)
        self.t_atlas.use(UNIT_ATLAS)
        self.t_screens.use(UNIT_SCREENS)
        self.fbo_rgb.use()
        ctx.viewport = (0, 0, FRAME_W, FRAME_H * self.max_tiles)
        self.set_tiles(self.max_tiles, tile0)
        if self.static_copy:
            for k, panel in enumerate(panels):
                self._copy_image(panel.glo, GL_TEXTURE_2D, 0, 0, 0, 0, self.t_rgb.glo, GL_TEXTURE_2D, 0,
                                 0, (tile0 + k) * FRAME_H, 0, PANEL_W, FRAME_H, 1)
        else:
            self._fixed_items(gl, n)
        if screens is not None:
            ctx.disable(moderngl.BLEND)
            self.vaos["game"].render(moderngl.TRIANGLE_STRIP, vertices=4, instances=n)
        lay, items, counts = gl.layout, gl.items, gl.counts
        self.draw_items(items["rects"], "rects", lay.n_static_rects, counts["rects"] - lay.n_static_rects, n,
                        BLEND_OVER)
        self.draw_items(items["edges"], "edges", 0, counts["edges"], n, (moderngl.ONE, moderngl.ONE))
        self.draw_items(items["nodes"], "nodes", 0, counts["nodes"], n, BLEND_OVER)
        self.draw_items(items["glyphs"], "text", lay.n_static_slots, counts["glyphs"] - lay.n_static_slots, n,
                        BLEND_OVER)
        ctx.disable(moderngl.BLEND)

    def finish(self) -> None:
        """Wait until every GL command issued so far is done, letting other Python threads run."""
        if self._gl_finish is not None:
            self._gl_finish()
        else:
            self.ctx.finish()

    def read_yuv(self, n: int) -> np.ndarray:
        """Convert tiles ``0..n-1`` to I420 on the GPU and read them: (n, 810, 960) uint8."""
        self.fbo_yuv.use()
        self.ctx.viewport = (0, 0, FRAME_W, YUV_ROWS * self.max_tiles)
        self.t_rgb.use(UNIT_RGB)
        self.vaos["yuv420"].render(moderngl.TRIANGLE_STRIP, vertices=4, instances=n)
        self.s_rgb_linear.use(UNIT_RGB)
        self.vaos["chroma"].render(moderngl.TRIANGLE_STRIP, vertices=4, instances=4 * n)
        self.s_rgb_linear.clear(UNIT_RGB)
        self.finish()
        # straight into an array: on an H100 1.0 ms a 16-frame pass, where ModernGL's read into
        # new bytes took 1.5 and a pixel-pack buffer 1.3 (benchmarks/gpu_pass_parts.py)
        frames = np.empty((n, YUV_ROWS, FRAME_W), np.uint8)
        self.fbo_yuv.read_into(frames, viewport=(0, 0, FRAME_W, YUV_ROWS * n), components=1, alignment=1)
        return frames

    def read_panels(self, n: int) -> np.ndarray:
        """The left (analytics) half of tiles ``0..n-1``: (n, 540, 480, 4) uint8 RGBA."""
        self.finish()
        data = self.fbo_rgb.read(viewport=(0, 0, PANEL_W, FRAME_H * n), components=4, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(n, FRAME_H, PANEL_W, 4)

    def read_rgb(self, n: int) -> np.ndarray:
        """Tiles ``0..n-1`` as (n, 540, 960, 3) uint8 RGB, rows top-down."""
        data = self.fbo_rgb.read(viewport=(0, 0, FRAME_W, FRAME_H * n), components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(n, FRAME_H, FRAME_W, 3)

    def close(self) -> None:
        for tex in (self.t_atlas, self.t_rgb, self.t_yuv, self.t_screens, *self._dyn.values()):
            tex.release()
        for gl in self._layouts.values():
            for tex in gl.items.values():
                tex.release()
        for tex in self._panels.values():
            tex.release()
        if self._scratch is not None:
            self._scratch.release()
        self.s_rgb_linear.release()
        self.fbo_rgb.release()
        self.fbo_yuv.release()
        for vao in self.vaos.values():
            vao.release()
        for prog in self.programs.values():
            prog.release()
        if self._own_ctx:
            if self._current:
                self.ctx.__exit__(None, None, None)  # leave no released context current
            self.ctx.release()

    def __enter__(self) -> FrameRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
