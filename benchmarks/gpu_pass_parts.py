"""Where one drawing pass's time goes (16 frames: the pipeline's pass at 16 milestones), part by
part, on whatever EGL renderer this machine has: the screens' upload, the draw calls, the GPU's
I420 pass, and several ways of reading the I420 planes back. Each part is synchronised with
glFinish so its time is its own. Median of repeated passes, milliseconds per pass."""

from __future__ import annotations

import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import moderngl
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stages import stage_setup

from gpurender.render.renderer import FRAME_W, YUV_ROWS, _gl_function

GL_PIXEL_PACK_BUFFER, GL_STREAM_READ = 0x88EB, 0x88E1


def _readback_buffer(ctx: moderngl.Context, size: int) -> moderngl.Buffer:
    """A pixel-pack buffer re-declared ``GL_STREAM_READ`` (ModernGL declares every buffer for
    drawing), the usage hint for read-back buffers."""
    buf = ctx.buffer(reserve=size, dynamic=True)
    bind = _gl_function("glBindBuffer", ctypes.c_uint, ctypes.c_uint)
    data = _gl_function("glBufferData", ctypes.c_uint, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_uint)
    if bind is not None and data is not None:
        bind(GL_PIXEL_PACK_BUFFER, buf.glo)
        data(GL_PIXEL_PACK_BUFFER, size, None, GL_STREAM_READ)
        bind(GL_PIXEL_PACK_BUFFER, 0)
    return buf


def main() -> None:
    reps = 40
    with stage_setup(torch.device("cpu"), quick=True) as (_, r, clip):
        n = r.max_tiles
        values, chars, screens = clip.take(0, n)
        nbytes = FRAME_W * YUV_ROWS * n
        pbo_stream = _readback_buffer(r.ctx, nbytes)
        pbo_draw = r.ctx.buffer(reserve=nbytes, dynamic=True)
        host = np.empty((n, YUV_ROWS, FRAME_W), np.uint8)
        other = np.empty_like(host)
        view = (0, 0, FRAME_W, YUV_ROWS * n)

        def yuv_pass() -> None:
            r.passes.i420.render(r.frame_target, r.i420_target, n)

        parts = {
            "upload screens (RGB texture array)": lambda: r.t_screens.write(
                np.ascontiguousarray(screens).tobytes(), viewport=(0, 0, 0, 160, 210, n)),
            "begin + draw (whole panel + game)": lambda: (r.begin(n), r.draw(clip.spec, values, chars, screens)),
            "I420 pass": yuv_pass,
            "fbo.read -> bytes (before)": lambda: r.fbo_yuv.read(viewport=view, components=1, alignment=1),
            "fbo.read_into numpy": lambda: r.fbo_yuv.read_into(host, viewport=view, components=1, alignment=1),
            "fbo.read_into PBO (STREAM_READ)": lambda: r.fbo_yuv.read_into(pbo_stream, viewport=view, components=1,
                                                                            alignment=1),
            "PBO (STREAM_READ) -> numpy": lambda: pbo_stream.read_into(host),
            "fbo.read_into PBO (ModernGL's DYNAMIC_DRAW)": lambda: r.fbo_yuv.read_into(pbo_draw, viewport=view,
                                                                                       components=1, alignment=1),
            "PBO (DYNAMIC_DRAW) -> numpy": lambda: pbo_draw.read_into(host),
            "read_yuv (the pipeline's, all of the above)": lambda: r.read_yuv(n),
            "host memcpy of the same bytes": lambda: np.copyto(other, host),
        }
        results = {}
        for name, call in parts.items():
            times = []
            for k in range(reps + 3):
                r.finish()
                t0 = time.perf_counter()
                call()
                r.finish()
                if k >= 3:
                    times.append((time.perf_counter() - t0) * 1e3)
            results[name] = round(statistics.median(times), 3)
            print(f"{results[name]:9.3f} ms  {name}", flush=True)
        out = {"renderer": r.renderer, "tiles": n, "bytes": nbytes, "ms_per_pass": results}
        Path(sys.argv[1] if len(sys.argv) > 1 else "pass_parts.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
