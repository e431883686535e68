"""``gpurender preview``: watch the agents play live in a window, frame for frame what the video
would contain.

The window shows the renderer's own frame: :class:`~gpurender.render.FrameRenderer` draws each
step into its offscreen target exactly as ``gpurender render`` does (same shaders, same panel
packing through :class:`~gpurender.pipeline.MilestonePanel`), and ``shaders/present.glsl`` blits
that tile into the window's default framebuffer, letterboxed to keep 16:9 at any window size
(the framebuffer size is read from glfw, so HiDPI screens get full resolution). Screenshots are
``read_rgb`` of that frame and recordings are ``read_yuv`` of it, so both equal the video.

One game runs (``make_atari(game, [seed])``); every milestone's agent is loaded up front and the
current one plays. Switching milestone (Tab, Shift+Tab, 1-9) swaps the agent and the game goes
on from where it is: the new agent takes over the same game, score and lives, with the same
frame stack, so you can compare how two milestones handle one situation. Nothing restarts.

Keys (also in the help overlay, ``h``)::

    space      pause / resume
    Right      one step while paused (hold to repeat)
    + / -      speed x2 / /2 (pace = --fps x speed agent steps per second)
    Tab        next milestone (Shift+Tab: previous); 1-9 jump to milestone 1-9
    s          save a PNG screenshot of the frame shown to --output-dir
    r          start / stop recording what is shown to an MP4 in --output-dir
    h          show / hide the help overlay
    Esc, q     quit (closing the window too); a recording is finished and kept

The help overlay is drawn by the renderer's own rect and text shaders and glyph atlas over a copy
of the frame, so it is visible in the window only: screenshots and recordings never contain it.
The window title is the HUD: milestone, frames per second reached, inference, environment and
draw milliseconds per frame, speed, and the paused / recording state.

Pacing: real time at ``fps x speed`` by a deadline scheduler (each frame starts at the previous
deadline plus one period; a frame later than one period resets the schedule instead of bursting
to catch up), so the rate is steady and does not drift. ``--uncapped`` draws as fast as it can.
The swap interval is 0: the scheduler, not vsync, paces the frames.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import glfw
import moderngl
import numpy as np
import torch
from PIL import Image

from gpurender.agents import pick_device
from gpurender.config import RenderConfig
from gpurender.encode import EncoderThread, EncodeSettings, VideoWriter, choose_encoder
from gpurender.envs import AtariStep, make_atari
from gpurender.errors import GpurenderError
from gpurender.games import resolve_game
from gpurender.milestones import find_milestones
from gpurender.pipeline import MilestonePanel
from gpurender.render import FrameRenderer
from gpurender.render.layout import CYAN, DIM, FRAME_H, FRAME_W, WHITE, YELLOW, Items
from gpurender.render.renderer import BLEND_OVER, UNIT_ATLAS, UNIT_CHARS
from gpurender.render.shaders import load_program
from gpurender.simulate import load_agents

log = logging.getLogger(__name__)

NO_DISPLAY = "no display: set DISPLAY (e.g. run under xvfb-run) or use `gpurender render` to write videos"
UNIT_PRESENT = 7
"""Texture unit of the present pass; the renderer uses 0-5."""
MIN_SPEED, MAX_SPEED = 1 / 16, 64.0
PAUSED_WAIT_S = 0.05
TITLE_EVERY_S = 0.25
FPS_WINDOW_S = 1.0

HELP_KEYS = (
    ("space", "pause / resume"),
    ("Right", "one step while paused (hold to repeat)"),
    ("+ / -", "speed x2 / x0.5"),
    ("Tab", "next milestone (Shift+Tab: previous)"),
    ("1-9", "jump to milestone 1-9"),
    ("s", "save a PNG screenshot of the frame"),
    ("r", "start / stop recording an MP4"),
    ("h", "show / hide this help"),
    ("Esc, q", "quit (a recording is finished and kept)"),
)
HELP_NOTE = "Switching milestone swaps the agent; the game goes on."


def help_text() -> str:
    """The key list as plain text (terminal)."""
    return "\n".join(f"  {k:<8} {v}" for k, v in HELP_KEYS) + f"\n  {HELP_NOTE}"


def letterbox(fb_w: int, fb_h: int) -> tuple[int, int, int, int]:
    """The largest 16:9 (frame-shaped) rectangle centred in the framebuffer: x, y, w, h pixels."""
    scale = min(fb_w / FRAME_W, fb_h / FRAME_H)
    w, h = max(1, round(FRAME_W * scale)), max(1, round(FRAME_H * scale))
    return (fb_w - w) // 2, (fb_h - h) // 2, w, h


def require_display() -> None:
    """Fail early, with what to do, where no X display is set (Linux; the glfw wheel speaks X11)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise GpurenderError(NO_DISPLAY)


def _open_window(title: str, size: tuple[int, int]) -> glfw._GLFWwindow:
    """A hidden, resizable window with an OpenGL 3.3 core, forward-compatible context made current."""
    require_display()
    errors: list[str] = []
    glfw.set_error_callback(lambda code, text: errors.append(
        text.decode(errors="replace") if isinstance(text, bytes) else str(text)))
    if not glfw.init():
        raise GpurenderError(f"{NO_DISPLAY} (glfw: {errors[-1] if errors else 'init failed'})")
    glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
    glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
    glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
    glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
    glfw.window_hint(glfw.RESIZABLE, True)
    glfw.window_hint(glfw.SCALE_TO_MONITOR, True)
    glfw.window_hint(glfw.VISIBLE, False)  # shown once the agents are loaded and a frame can be drawn
    # nothing here uses depth or stencil; without them llvmpipe blits into the window ~3x faster
    glfw.window_hint(glfw.DEPTH_BITS, 0)
    glfw.window_hint(glfw.STENCIL_BITS, 0)
    window = glfw.create_window(size[0], size[1], title, None, None)
    if not window:
        glfw.terminate()
        raise GpurenderError(f"cannot open an OpenGL 3.3 core window (glfw: {errors[-1] if errors else '?'}); "
                             "use `gpurender render` to write videos")
    glfw.make_context_current(window)
    glfw.swap_interval(0)
    return window


class Pacer:
    """Deadline scheduler: frame k starts at ``t0 + k x period``, never before.

    A frame that starts late (but by less than a period) keeps the schedule, so the next one
    starts early to make up and the average rate does not drift; one later than a whole period
    restarts the schedule from now instead of bursting through the missed frames.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.clock, self.sleep = clock, sleep
        self.deadline: float | None = None
        self.resets = 0
        """Times the schedule was restarted because a frame was over a period late."""

    def reset(self) -> None:
        """Restart the schedule at the next frame (after a pause or a change of rate)."""
        self.deadline = None

    def wait(self, period: float) -> float:
        """Sleep until the next frame is due; -> its scheduled start."""
        now = self.clock()
        if self.deadline is None:
            self.deadline = now
        elif now - self.deadline > period:
            self.deadline = now
            self.resets += 1
        elif now < self.deadline:
            self.sleep(self.deadline - now)
        start = self.deadline
        self.deadline += period
        return start


class _HelpOverlay:
    """The help box, drawn over a copy of the frame by the renderer's rect and text programs."""

    PAD, LINE_GAP = 14, 3

    def __init__(self, renderer: FrameRenderer, milestones: list[str]) -> None:
        self.r = renderer
        ctx = renderer.ctx
        atlas = renderer.atlas
        head, body = atlas.fonts["head"], atlas.fonts["body"]
        key_w = max(len(k) for k, _ in HELP_KEYS) + 2
        self.width = max(len(HELP_NOTE), key_w + max(len(v) for _, v in HELP_KEYS), 44)
        self.milestones = milestones[:9]
        shown = len(self.milestones) + (len(milestones) > 9)
        # (font, colour per column range) per line; text filled in by chars()
        lines: list[tuple[object, list[tuple[int, tuple]]]] = [(head, [(0, CYAN)])]
        lines += [(body, [(0, YELLOW), (key_w, WHITE)]) for _ in HELP_KEYS]
        lines += [(body, [(0, DIM)]), (head, [(0, CYAN)])]
        lines += [(body, [(0, YELLOW), (4, WHITE)]) for _ in range(shown)]
        lines += [(body, [(0, DIM)])]
        self.key_w = key_w
        line_h = body.cell_h + self.LINE_GAP
        box_w = self.width * body.cell_w + 2 * self.PAD
        box_h = len(lines) * line_h + 2 * self.PAD
        x0, y0 = (FRAME_W - box_w) // 2, (FRAME_H - box_h) // 2
        rects, glyphs = Items(), Items()
        rects.add((x0, y0, box_w, box_h), (0.03, 0.035, 0.06, 0.94))
        rects.add((x0, y0, box_w, 1), (0.25, 0.3, 0.45, 1.0))
        rects.add((x0, y0 + box_h - 1, box_w, 1), (0.25, 0.3, 0.45, 1.0))
        for i, (font, colours) in enumerate(lines):
            y = y0 + self.PAD + i * line_h
            for c in range(self.width):
                colour = [col for start, col in colours if c >= start][-1]
                glyphs.add((x0 + self.PAD + c * font.cell_w, y, font.index, 0), colour)
        self.n_lines = len(lines)
        self.items = {}
        for name, items in (("rects", rects), ("glyphs", glyphs)):
            self.items[name] = renderer.items_texture(items)
        self.t_chars = ctx.texture((len(glyphs), 1), 1, dtype="u1", alignment=1)
        self.t_chars.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.t_out = ctx.texture((FRAME_W, FRAME_H), 4)
        self.fbo = ctx.framebuffer([self.t_out])
        self._chars_key: tuple | None = None

    def lines(self, current: int, speed: float, status: str) -> list[str]:
        out = ["gpurender preview - keys"]
        out += [f"{k:<{self.key_w}}{v}" for k, v in HELP_KEYS]
        out += [HELP_NOTE, f"Milestones (speed x{speed:g})"]
        for i, label in enumerate(self.milestones):
            out.append(f"{'>' if i == current else ' '}{i + 1:>2} {label}")
        if len(out) < self.n_lines - 1:
            out.append("    ... more: Tab cycles through all")
        out.append(status)
        return out

    def render(self, current: int, speed: float, status: str) -> moderngl.Texture:
        """-> a texture holding the current frame with the help box drawn over it."""
        r, ctx = self.r, self.r.ctx
        key = (current, speed, status)
        if key != self._chars_key:
            text = "".join(line[: self.width].ljust(self.width) for line in self.lines(current, speed, status))
            self.t_chars.write(text.encode("ascii", "replace"))
            self._chars_key = key
        ctx.copy_framebuffer(self.fbo, r.fbo_rgb)
        self.fbo.use()
        ctx.viewport = (0, 0, FRAME_W, FRAME_H)
        self.t_chars.use(UNIT_CHARS)
        r.t_atlas.use(UNIT_ATLAS)
        r.set_tiles(1, 0)  # this target is one frame tall
        for kind, prog_name in (("rects", "rects"), ("glyphs", "text")):
            tex, count = self.items[kind]
            r.draw_items(tex, prog_name, 0, count, 1, BLEND_OVER)
        r.set_tiles(r.max_tiles, 0)
        ctx.disable(moderngl.BLEND)
        return self.t_out

    def release(self) -> None:
        for tex, _ in self.items.values():
            tex.release()
        self.t_chars.release()
        self.fbo.release()
        self.t_out.release()


class Preview:
    """A live window on the render pipeline: one game, every milestone's agent, one drawn frame per step.

    Drive it with :meth:`run`, or step by step with :meth:`tick` (one pass of the loop: input,
    pacing, maybe a frame) and :meth:`step` (one frame, now). :meth:`close` finishes a recording.
    """

    def __init__(self, cfg: RenderConfig, *, speed: float = 1.0, uncapped: bool = False,
                 output_dir: str | Path = ".", window_size: tuple[int, int] = (FRAME_W, FRAME_H),
                 visible: bool = True) -> None:
        self.cfg = cfg
        self.game = resolve_game(cfg.game)
        self.output_dir = Path(output_dir)
        self.speed = min(MAX_SPEED, max(MIN_SPEED, float(speed)))
        self.uncapped = uncapped
        self.paused = False
        self.help_visible = False
        self.frames = 0
        """Frames drawn (agent steps taken) so far."""
        self.last_frame_start = 0.0
        """``perf_counter()`` at the start of the latest frame."""
        self.title = ""
        self.window = None
        self.renderer: FrameRenderer | None = None
        self.env = None
        self.overlay: _HelpOverlay | None = None
        self._encoder: EncoderThread | None = None
        self.recording_path: Path | None = None
        self.recorded_frames = 0
        self._step_requested = False
        self.pacer = Pacer()
        self._dirty = True
        self._starts: collections.deque[float] = collections.deque(maxlen=1000)
        """Start times of the frames of the last second (the HUD's fps)."""
        self._ms = {"infer": 0.0, "env": 0.0, "draw": 0.0}
        self.frame_ms = dict(self._ms)
        """Milliseconds of the latest frame: inference, draw (pack, draw, read back when recording,
        present, swap), env step."""
        self._title_at = 0.0
        try:
            self._open(window_size, visible)
        except BaseException:
            self.close()
            raise

    def _open(self, window_size: tuple[int, int], visible: bool) -> None:
        cfg = self.cfg
        self.window = _open_window("gpurender preview", window_size)  # no display: say so first
        milestones = find_milestones(cfg.model_dir, cfg.milestones)
        self.ctx = moderngl.create_context(require=330)
        self.renderer = FrameRenderer(ctx=self.ctx, max_tiles=1)
        failures: list[tuple[Path, str]] = []
        loaded = load_agents(cfg, self.game, pick_device(cfg.device), milestones, failures)
        if not loaded:
            raise GpurenderError(f"no milestone could be loaded: {failures[0][1]}" if failures
                                 else "no milestone to show")
        self.panels = [MilestonePanel(m, agent, self.game, self.renderer) for m, agent in loaded]
        self.current = 0
        self.present_prog = load_program(self.ctx, "present")
        self.present_prog["t_frame"].value = UNIT_PRESENT
        self.present_prog["u_uv_rect"].value = (0.0, 0.0, 1.0, 1.0 / self.renderer.max_tiles)
        self.present_vao = self.ctx.vertex_array(self.present_prog, [])
        linear = (moderngl.LINEAR, moderngl.LINEAR)
        self.s_frame = self.ctx.sampler(texture=self.renderer.t_rgb, filter=linear, repeat_x=False, repeat_y=False)
        self.overlay = _HelpOverlay(self.renderer, [f"{p.agent.algo:<6} {p.milestone.display}"
                                                    for p in self.panels])
        self.s_overlay = self.ctx.sampler(texture=self.overlay.t_out, filter=linear, repeat_x=False, repeat_y=False)
        self.env = make_atari(self.game, [cfg.seed], cfg.backend)
        self._state: AtariStep = self.env.reset()
        self._score = np.zeros(1, np.float64)
        glfw.set_key_callback(self.window, lambda _w, key, _sc, action, mods: self.handle_key(key, action, mods))
        glfw.set_framebuffer_size_callback(self.window, lambda *_: self._mark_dirty())
        glfw.set_window_refresh_callback(self.window, lambda *_: self._mark_dirty())
        self._update_title(force=True)
        if visible:
            glfw.show_window(self.window)

    # -- state ---------------------------------------------------------------------------------

    @property
    def panel(self) -> MilestonePanel:
        """The milestone whose agent is playing."""
        return self.panels[self.current]

    @property
    def period(self) -> float:
        """Seconds per frame at the current speed."""
        return 1.0 / (self.cfg.fps * self.speed)

    @property
    def recording(self) -> bool:
        return self._encoder is not None

    @property
    def fps(self) -> float:
        """Frames per second reached over the last second."""
        s = self._starts
        return (len(s) - 1) / (s[-1] - s[0]) if len(s) > 1 and s[-1] > s[0] else 0.0

    def _mark_dirty(self) -> None:
        self._dirty = True

    def select(self, index: int) -> None:
        """Hand the game to milestone ``index``'s agent (the game goes on, and so do the panel's
        action and reward histories)."""
        index %= len(self.panels)
        if index != self.current:
            self.panels[index].continue_history(self.panel)
        self.current = index
        self._dirty = True
        self._update_title(force=True)

    def set_speed(self, speed: float) -> None:
        self.speed = min(MAX_SPEED, max(MIN_SPEED, speed))
        self.pacer.reset()  # restart the schedule at the new period
        self._update_title(force=True)

    # -- input ---------------------------------------------------------------------------------

    def handle_key(self, key: int, action: int, mods: int) -> None:
        """React to one key event (the glfw key callback; tests call it directly)."""
        if action == glfw.RELEASE:
            return
        repeatable = key in (glfw.KEY_RIGHT, glfw.KEY_EQUAL, glfw.KEY_KP_ADD, glfw.KEY_MINUS, glfw.KEY_KP_SUBTRACT)
        if action == glfw.REPEAT and not repeatable:
            return
        if key in (glfw.KEY_ESCAPE, glfw.KEY_Q):
            glfw.set_window_should_close(self.window, True)
        elif key == glfw.KEY_SPACE:
            self.paused = not self.paused
            self.pacer.reset()
        elif key == glfw.KEY_RIGHT:
            if self.paused:
                self._step_requested = True
        elif key in (glfw.KEY_EQUAL, glfw.KEY_KP_ADD):
            self.set_speed(self.speed * 2)
        elif key in (glfw.KEY_MINUS, glfw.KEY_KP_SUBTRACT):
            self.set_speed(self.speed / 2)
        elif key == glfw.KEY_TAB:
            self.select(self.current + (-1 if mods & glfw.MOD_SHIFT else 1))
        elif glfw.KEY_1 <= key <= glfw.KEY_9 or glfw.KEY_KP_1 <= key <= glfw.KEY_KP_9:
            n = key - (glfw.KEY_1 if key <= glfw.KEY_9 else glfw.KEY_KP_1)
            if n < len(self.panels):
                self.select(n)
        elif key in (glfw.KEY_S, glfw.KEY_R):
            try:
                if key == glfw.KEY_S:
                    self.screenshot()
                else:
                    self.toggle_recording()
            except (GpurenderError, OSError) as exc:  # an unwritable folder must not end the session
                print(f"gpurender: error: {exc}", file=sys.stderr)
        elif key == glfw.KEY_H:
            self.help_visible = not self.help_visible
        self._dirty = True
        self._update_title(force=True)

    # -- one frame -----------------------------------------------------------------------------

    def step(self) -> None:
        """Draw the current game state as the next frame, show it, then advance the game one step."""
        t0 = time.perf_counter()
        self.last_frame_start = t0
        self._starts.append(t0)
        while len(self._starts) > 2 and self._starts[0] < t0 - FPS_WINDOW_S:
            self._starts.popleft()
        panel, s = self.panel, self._state
        out = panel.infer(s.obs)
        t1 = time.perf_counter()
        values, chars = panel.pack(self.frames, 0, out, self._score, s.lives)
        r = self.renderer
        r.begin(1)
        r.draw(panel.spec, values, chars, s.screens)
        if self._encoder is not None:
            self._encoder.submit(r.read_yuv(1)[0])
            self.recorded_frames += 1
        self._show()
        t2 = time.perf_counter()
        self._state = self.env.step(out["actions"])
        self._score += self._state.rewards
        self._score[self._state.game_over] = 0.0
        t3 = time.perf_counter()
        self.frames += 1
        self.frame_ms = {"infer": 1000 * (t1 - t0), "draw": 1000 * (t2 - t1), "env": 1000 * (t3 - t2)}
        for name, ms in self.frame_ms.items():
            self._ms[name] += 0.1 * (ms - self._ms[name])  # smoothed for the HUD
        self._update_title()

    def _present(self) -> None:
        """Blit tile 0 (or the help composite) into the window's back buffer, letterboxed."""
        ctx = self.ctx
        fb_w, fb_h = glfw.get_framebuffer_size(self.window)
        ctx.screen.use()
        ctx.viewport = (0, 0, fb_w, fb_h)
        ctx.disable(moderngl.BLEND)
        ctx.clear(0.0, 0.0, 0.0, 1.0)
        if fb_w <= 0 or fb_h <= 0:  # minimised
            return
        x, y, w, h = letterbox(fb_w, fb_h)
        self.present_prog["u_viewport_rect"].value = (2 * x / fb_w - 1, 2 * y / fb_h - 1,
                                                      2 * (x + w) / fb_w - 1, 2 * (y + h) / fb_h - 1)
        sampler = self.s_frame
        if self.help_visible:
            self.overlay.render(self.current, self.speed, self._status())
            ctx.screen.use()
            ctx.viewport = (0, 0, fb_w, fb_h)
            sampler = self.s_overlay
        sampler.use(UNIT_PRESENT)
        self.present_vao.render(moderngl.TRIANGLE_STRIP, vertices=4)
        sampler.clear(UNIT_PRESENT)

    def _show(self) -> None:
        self._present()
        glfw.swap_buffers(self.window)
        self._dirty = False

    def frame_rgb(self) -> np.ndarray:
        """The frame last drawn, as the video has it: (540, 960, 3) uint8 RGB, rows top-down."""
        return self.renderer.read_rgb(1)[0]

    def window_rgb(self) -> np.ndarray:
        """What the window shows (without swapping): (fb_h, fb_w, 3) uint8 RGB, rows top-down."""
        self._present()
        fb_w, fb_h = glfw.get_framebuffer_size(self.window)
        data = self.ctx.screen.read(viewport=(0, 0, fb_w, fb_h), components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(fb_h, fb_w, 3)[::-1]

    # -- the loop ------------------------------------------------------------------------------

    def tick(self) -> bool:
        """One pass of the loop: handle input, then (unless paused) wait for the deadline and draw
        a frame. -> whether a frame was drawn."""
        glfw.poll_events()
        if glfw.window_should_close(self.window):
            return False
        if self.paused:
            if self._step_requested:
                self._step_requested = False
                self.step()
                return True
            if self._dirty:
                self._show()
            glfw.wait_events_timeout(PAUSED_WAIT_S)
            return False
        if not self.uncapped:
            self.pacer.wait(self.period)
        self.step()
        return True

    def run(self, max_frames: int = 0) -> int:
        """Loop until the window closes (Esc, q, the close button) or ``max_frames`` frames are
        drawn (0: no limit). -> frames drawn."""
        drawn = 0
        while not glfw.window_should_close(self.window):
            drawn += self.tick()
            if max_frames and drawn >= max_frames:
                break
        return drawn

    @property
    def should_close(self) -> bool:
        return bool(glfw.window_should_close(self.window))

    # -- outputs -------------------------------------------------------------------------------

    def _output_path(self, kind: str, suffix: str) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = f"preview_{self.game.name}_{self.panel.milestone.slug}_{kind}_{stamp}_f{self.frames:06d}"
        path = self.output_dir / f"{base}{suffix}"
        n = 1
        while path.exists():
            path = self.output_dir / f"{base}_{n}{suffix}"
            n += 1
        return path

    def screenshot(self, path: str | Path | None = None) -> Path | None:
        """Save the frame shown (the video's frame, no overlay) as a PNG; None before the first frame."""
        if self.frames == 0:
            print("gpurender: no frame drawn yet; nothing to save")
            return None
        path = Path(path) if path is not None else self._output_path("shot", ".png")
        Image.fromarray(self.frame_rgb(), "RGB").save(path)
        print(f"gpurender: screenshot {path}")
        return path

    def toggle_recording(self) -> Path | None:
        """Start recording the frames shown, or stop and finish the MP4. -> the MP4 when stopped."""
        if self._encoder is None:
            codec, _ = choose_encoder(self.cfg.encoder)
            path = self._output_path("rec", ".mp4")
            settings = EncodeSettings(fps=self.cfg.fps, crf=self.cfg.crf, preset=self.cfg.preset)
            self._encoder = EncoderThread(VideoWriter(path, codec, settings))
            self.recording_path, self.recorded_frames = path, 0
            print(f"gpurender: recording to {path} (r again to stop)")
            return None
        return self.stop_recording()

    def stop_recording(self) -> Path | None:
        """Finish the MP4 being recorded, if any (renamed into place); -> its path."""
        encoder, self._encoder = self._encoder, None
        if encoder is None:
            return None
        encoder.finish()
        print(f"gpurender: recorded {self.recorded_frames} frames to {self.recording_path}")
        return self.recording_path

    # -- HUD -----------------------------------------------------------------------------------

    def _status(self) -> str:
        pace = "uncapped" if self.uncapped else f"{self.cfg.fps * self.speed:g} steps/s"
        parts = ["paused" if self.paused else pace]
        if self.recording:
            parts.append(f"REC {self.recorded_frames} frames")
        return f"frame {self.frames:,} | " + " | ".join(parts)

    def _update_title(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._title_at < TITLE_EVERY_S:
            return
        self._title_at = now
        p = self.panel
        target = "uncapped" if self.uncapped else f"/{self.cfg.fps * self.speed:g}"
        ms = self._ms
        title = (f"gpurender {self.game.name} | milestone {p.milestone.display} {p.agent.algo} "
                 f"({self.current + 1}/{len(self.panels)}) | {self.fps:.1f}{target} fps | "
                 f"infer {ms['infer']:.1f} ms | env {ms['env']:.1f} ms | draw {ms['draw']:.1f} ms | "
                 f"x{self.speed:g}")
        if self.paused:
            title += " | PAUSED"
        if self.recording:
            title += f" | REC {self.recorded_frames}"
        title += " | h: help"
        if title != self.title:
            self.title = title
            glfw.set_window_title(self.window, title)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish a recording, release GL resources, close the window and the game. Idempotent."""
        try:
            self.stop_recording()
        finally:
            if self.overlay is not None:
                self.overlay.release()
                self.overlay = None
            for name in ("s_overlay", "s_frame", "present_vao", "present_prog"):
                if (obj := self.__dict__.pop(name, None)) is not None:
                    obj.release()
            if self.renderer is not None:
                self.renderer.close()
                self.renderer = None
            if self.env is not None:
                self.env.close()
                self.env = None
            if self.window is not None:
                glfw.destroy_window(self.window)
                self.window = None
                glfw.terminate()

    def __enter__(self) -> Preview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_preview(args: argparse.Namespace, cfg: RenderConfig) -> int:
    """``gpurender preview``: open the window and run until it is closed."""
    speed = getattr(args, "speed", 1.0) or 1.0
    if speed <= 0:
        raise GpurenderError(f"--speed must be positive, got {speed}")
    if cfg.fps <= 0:
        raise GpurenderError(f"--fps must be positive, got {cfg.fps}")
    if pick_device(cfg.device).type == "cpu":
        # batch-1 inference gains little from more threads, and spinning torch threads steal the
        # cores llvmpipe and the emulator need (on a busy 2-core machine: 5 ms at 1, 130 ms at 2)
        torch.set_num_threads(1)
    pv = Preview(cfg, speed=speed, uncapped=bool(getattr(args, "uncapped", False)),
                 output_dir=getattr(args, "output_dir", None) or ".")
    try:
        print("gpurender preview: h shows the keys, Esc or q quits")
        pv.run(getattr(args, "max_frames", 0) or 0)
    finally:
        pv.close()
    return 0
