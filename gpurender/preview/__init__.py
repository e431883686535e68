"""``gpurender preview``: watch the agents play live in a window, frame for frame what the video
would contain.

The window shows the renderer's own frame: :class:`~gpurender.render.FrameRenderer` draws each
step into its offscreen target exactly as ``gpurender render`` does (same passes, same panel
packing through :class:`~gpurender.panel.MilestonePanel`), and the present pass
(:class:`~gpurender.render.passes.PresentPass`, ``shaders/present.glsl``) blits that tile into
the window's default framebuffer, letterboxed to keep 16:9 at any window size (the framebuffer
size is read from glfw, so HiDPI screens get full resolution). Screenshots are ``read_rgb`` of
that frame and recordings are ``read_yuv`` of it, so both equal the video.

One game runs through the rollout core (:class:`~gpurender.rollout.Rollout` over
``make_atari(game, [seed])``, which also keeps its score); every milestone's agent is loaded up
front as a forward of its own, with its own level normaliser, and the current one plays.
Switching milestone (Tab, Shift+Tab, 1-9) swaps the forward and the game goes on from where it
is: the new agent takes over the same game, score and lives, with the same frame stack, and the
panel's action and score histories, so you can compare how two milestones handle one situation.
Nothing restarts.

Keys (also in the help overlay, ``h``)::

    space      pause / resume
    Right      one step while paused (hold to repeat)
    + / -      speed x2 / /2 (pace = --fps x speed agent steps per second)
    Tab        next milestone (Shift+Tab: previous); 1-9 jump to milestone 1-9
    s          save a PNG screenshot of the frame shown to --output-dir
    r          start / stop recording what is shown to an MP4 in --output-dir
    h          show / hide the help overlay
    Esc, q     quit (closing the window too); a recording is finished and kept

The help overlay is drawn by the renderer's own rect and text passes and glyph atlas over a copy
of the frame, so it is visible in the window only: screenshots and recordings never contain it.
The window title is the HUD: milestone, frames per second reached, inference, environment and
draw milliseconds per frame, speed, and the paused / recording state.

Pacing: real time at ``fps x speed`` by a deadline scheduler (each frame starts at the previous
deadline plus one period; a frame later than one period resets the schedule instead of bursting
to catch up), so the rate is steady and does not drift. ``--uncapped`` draws as fast as it can.
The swap interval is 0: the scheduler, not vsync, paces the frames.
"""

from gpurender.preview.app import Preview, run_preview
from gpurender.preview.overlay import HelpOverlay
from gpurender.preview.window import (
    HELP_KEYS,
    HELP_NOTE,
    KEYS,
    NO_DISPLAY,
    SHIFT_KEYS,
    Command,
    KeyBinding,
    Pacer,
    Window,
    help_text,
    key_binding,
    letterbox,
    require_display,
)

__all__ = [
    "HELP_KEYS",
    "HELP_NOTE",
    "KEYS",
    "NO_DISPLAY",
    "SHIFT_KEYS",
    "Command",
    "HelpOverlay",
    "KeyBinding",
    "Pacer",
    "Preview",
    "Window",
    "help_text",
    "key_binding",
    "letterbox",
    "require_display",
    "run_preview",
]
