"""Drawing: GL context, shaders, glyph atlas, panel layout and the batched frame renderer."""

from gpurender.render.layout import PanelLayout, PanelSpec
from gpurender.render.renderer import FrameRenderer

__all__ = ["FrameRenderer", "PanelLayout", "PanelSpec"]
