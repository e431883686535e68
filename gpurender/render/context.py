"""OpenGL contexts: headless EGL (Mesa llvmpipe without a GPU, the NVIDIA driver with one)."""

from __future__ import annotations

import moderngl

from gpurender.errors import GpurenderError

MIN_GL = 330


def create_headless_context() -> moderngl.Context:
    """A standalone OpenGL 3.3+ core context through EGL; a clear error if none can be made."""
    try:
        ctx = moderngl.create_standalone_context(backend="egl", require=MIN_GL)
    except Exception as exc:  # glcontext raises plain Exceptions
        raise GpurenderError(
            f"cannot create a headless OpenGL context through EGL ({exc}); install Mesa's EGL "
            "(apt-get install libegl1 libgl1-mesa-dri) or the NVIDIA driver's EGL"
        ) from None
    return ctx


def renderer_name(ctx: moderngl.Context) -> str:
    info = ctx.info
    return f"{info.get('GL_RENDERER', '?')} ({info.get('GL_VERSION', '?')})"


def is_software(renderer: str) -> bool:
    """Whether ``renderer`` (:func:`renderer_name`) is one of Mesa's CPU rasterisers."""
    return any(name in renderer.lower() for name in ("llvmpipe", "softpipe", "swrast"))
