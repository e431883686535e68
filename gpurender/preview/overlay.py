"""The help overlay: the keys, the milestones and the state, in a box over a copy of the frame.

Drawn by the frame renderer's own rect and text passes and glyph atlas (a
:class:`~gpurender.render.passes.TextBoxPass`) into a target of its own, so the window shows it
and screenshots and recordings, which read the renderer's frame, never contain it.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpurender.preview.window import HELP_KEYS, HELP_NOTE
from gpurender.render import FrameRenderer, Target
from gpurender.render.layout import CYAN, DIM, FRAME_H, FRAME_W, WHITE, YELLOW
from gpurender.render.passes import TextBoxPass, TextLine

SHOWN_MILESTONES = 9
"""Milestones listed (the 1-9 keys); Tab reaches the rest."""


class HelpOverlay:
    """The help box for a preview of ``milestones`` (their labels, in order)."""

    def __init__(self, renderer: FrameRenderer, milestones: Sequence[str]) -> None:
        self.milestones = list(milestones[:SHOWN_MILESTONES])
        self.key_w = max(len(k) for k, _ in HELP_KEYS) + 2
        width = max(len(HELP_NOTE), self.key_w + max(len(v) for _, v in HELP_KEYS), 44)
        listed = len(self.milestones) + (len(milestones) > SHOWN_MILESTONES)
        heading = TextLine("head", ((0, CYAN),))
        note = TextLine("body", ((0, DIM),))
        lines = [heading, *[TextLine("body", ((0, YELLOW), (self.key_w, WHITE)))] * len(HELP_KEYS), note, heading]
        lines += [TextLine("body", ((0, YELLOW), (4, WHITE)))] * listed
        lines.append(note)
        self.box = TextBoxPass(renderer.passes.rects, renderer.passes.text, lines, width)
        ctx = renderer.ctx
        self.target = Target(ctx.framebuffer([ctx.texture((FRAME_W, FRAME_H), 4)]))

    def lines(self, current: int, speed: float, status: str) -> list[str]:
        """The box's text: the keys, the milestones with ``current`` marked, and ``status``."""
        out = ["gpurender preview - keys"]
        out += [f"{k:<{self.key_w}}{v}" for k, v in HELP_KEYS]
        out += [HELP_NOTE, f"Milestones (speed x{speed:g})"]
        for i, label in enumerate(self.milestones):
            out.append(f"{'>' if i == current else ' '}{i + 1:>2} {label}")
        if len(out) < self.box.n_lines - 1:
            out.append("    ... more: Tab cycles through all")
        out.append(status)
        return out

    def render(self, frame: Target, current: int, speed: float, status: str) -> Target:
        """-> a target holding ``frame``'s first frame with the help box drawn over it."""
        self.box.text = self.lines(current, speed, status)
        self.box.render(frame, self.target)
        return self.target

    def release(self) -> None:
        self.box.release()
        texture = self.target.texture
        self.target.fbo.release()
        texture.release()
