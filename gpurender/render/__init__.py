"""Drawing: GL context, shaders, glyph atlas, panel layout, the render passes and the batched frame
renderer."""

from gpurender.render.layout import PanelLayout, PanelSpec
from gpurender.render.passes import Target
from gpurender.render.renderer import FramePasses, FrameRenderer

__all__ = ["FramePasses", "FrameRenderer", "PanelLayout", "PanelSpec", "Target"]
