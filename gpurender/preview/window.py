"""The preview's window: glfw with an OpenGL 3.3 core context, the key table, the frame pacer and
the letterbox that keeps the frame 16:9 at any window size."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from enum import Enum, auto
from typing import NamedTuple

import glfw

from gpurender.errors import GpurenderError
from gpurender.render.layout import FRAME_H, FRAME_W

NO_DISPLAY = "no display: set DISPLAY (e.g. run under xvfb-run) or use `gpurender render` to write videos"


def require_display() -> None:
    """Fail early, with what to do, where no X display is set (Linux; the glfw wheel speaks X11)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise GpurenderError(NO_DISPLAY)


def letterbox(fb_w: int, fb_h: int) -> tuple[int, int, int, int]:
    """The largest 16:9 (frame-shaped) rectangle centred in the framebuffer: x, y, w, h pixels."""
    scale = min(fb_w / FRAME_W, fb_h / FRAME_H)
    w, h = max(1, round(FRAME_W * scale)), max(1, round(FRAME_H * scale))
    return (fb_w - w) // 2, (fb_h - h) // 2, w, h


# -- keys -----------------------------------------------------------------------------------------


class Command(Enum):
    """What a key asks the preview to do."""

    QUIT = auto()
    PAUSE = auto()
    STEP = auto()
    FASTER = auto()
    SLOWER = auto()
    NEXT = auto()
    PREVIOUS = auto()
    MILESTONE = auto()
    SCREENSHOT = auto()
    RECORD = auto()
    HELP = auto()


class KeyBinding(NamedTuple):
    command: Command
    arg: int = 0
    """The milestone index of :attr:`Command.MILESTONE`."""
    repeats: bool = False
    """Whether holding the key down repeats the command."""


KEYS: dict[int, KeyBinding] = {
    glfw.KEY_ESCAPE: KeyBinding(Command.QUIT),
    glfw.KEY_Q: KeyBinding(Command.QUIT),
    glfw.KEY_SPACE: KeyBinding(Command.PAUSE),
    glfw.KEY_RIGHT: KeyBinding(Command.STEP, repeats=True),
    glfw.KEY_EQUAL: KeyBinding(Command.FASTER, repeats=True),  # the + key, shifted or not
    glfw.KEY_KP_ADD: KeyBinding(Command.FASTER, repeats=True),
    glfw.KEY_MINUS: KeyBinding(Command.SLOWER, repeats=True),
    glfw.KEY_KP_SUBTRACT: KeyBinding(Command.SLOWER, repeats=True),
    glfw.KEY_TAB: KeyBinding(Command.NEXT),
    **{glfw.KEY_1 + n: KeyBinding(Command.MILESTONE, n) for n in range(9)},
    **{glfw.KEY_KP_1 + n: KeyBinding(Command.MILESTONE, n) for n in range(9)},
    glfw.KEY_S: KeyBinding(Command.SCREENSHOT),
    glfw.KEY_R: KeyBinding(Command.RECORD),
    glfw.KEY_H: KeyBinding(Command.HELP),
}
"""Every key the preview reacts to."""
SHIFT_KEYS: dict[int, KeyBinding] = {glfw.KEY_TAB: KeyBinding(Command.PREVIOUS)}
"""Keys that mean something else with Shift held."""

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
""":data:`KEYS` as the help shows them."""
HELP_NOTE = "Switching milestone swaps the agent; the game goes on."


def help_text() -> str:
    """The key list as plain text (terminal)."""
    return "\n".join(f"  {k:<8} {v}" for k, v in HELP_KEYS) + f"\n  {HELP_NOTE}"


def key_binding(key: int, action: int, mods: int) -> KeyBinding | None:
    """The binding a glfw key event triggers: a press, or a held key's repeat for keys that
    repeat; None for anything else."""
    if action == glfw.RELEASE:
        return None
    binding = (SHIFT_KEYS.get(key) if mods & glfw.MOD_SHIFT else None) or KEYS.get(key)
    if binding is None or (action == glfw.REPEAT and not binding.repeats):
        return None
    return binding


# -- the window -----------------------------------------------------------------------------------


class Window:
    """A resizable glfw window whose OpenGL 3.3 core, forward-compatible context is current on
    this thread; hidden until :meth:`show`. The swap interval is 0: the :class:`Pacer`, not
    vsync, paces the frames."""

    def __init__(self, title: str, size: tuple[int, int]) -> None:
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
        glfw.window_hint(glfw.VISIBLE, False)
        # nothing here uses depth or stencil; without them llvmpipe blits into the window faster
        glfw.window_hint(glfw.DEPTH_BITS, 0)
        glfw.window_hint(glfw.STENCIL_BITS, 0)
        self.handle = glfw.create_window(size[0], size[1], title, None, None)
        if not self.handle:
            glfw.terminate()
            raise GpurenderError(f"cannot open an OpenGL 3.3 core window (glfw: {errors[-1] if errors else '?'}); "
                                 "use `gpurender render` to write videos")
        glfw.make_context_current(self.handle)
        glfw.swap_interval(0)
        self.title = title

    @property
    def framebuffer_size(self) -> tuple[int, int]:
        """The drawable size in pixels (HiDPI screens: larger than the window's size)."""
        return glfw.get_framebuffer_size(self.handle)

    @property
    def should_close(self) -> bool:
        return bool(glfw.window_should_close(self.handle))

    def request_close(self) -> None:
        """Close at the next turn of the loop (what the close button does)."""
        glfw.set_window_should_close(self.handle, True)

    def set_title(self, title: str) -> None:
        if title != self.title:
            self.title = title
            glfw.set_window_title(self.handle, title)

    def on_key(self, callback: Callable[[int, int, int], None]) -> None:
        """Call ``callback(key, action, mods)`` for every key event."""
        glfw.set_key_callback(self.handle, lambda _w, key, _scancode, action, mods: callback(key, action, mods))

    def on_damage(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the window's content must be drawn again (resized, exposed)."""
        glfw.set_framebuffer_size_callback(self.handle, lambda *_: callback())
        glfw.set_window_refresh_callback(self.handle, lambda *_: callback())

    def show(self) -> None:
        glfw.show_window(self.handle)

    def swap(self) -> None:
        glfw.swap_buffers(self.handle)

    @staticmethod
    def poll() -> None:
        """Handle pending events (key callbacks run here)."""
        glfw.poll_events()

    @staticmethod
    def wait(timeout: float) -> None:
        """Sleep until an event arrives or ``timeout`` seconds pass."""
        glfw.wait_events_timeout(timeout)

    def close(self) -> None:
        """Destroy the window and end glfw."""
        glfw.destroy_window(self.handle)
        glfw.terminate()


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
