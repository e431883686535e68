"""H.264 encoders behind one small interface: libx264 through PyAV on any machine, NVENC
(PyAV's ``h264_nvenc``) where the GPU has an encoder engine. Frames arrive as I420 planes
(810 x 960 uint8: Y, then U, then V) straight from a GPU's conversion pass, or as RGBA
(540 x 960 x 4) from a software renderer, converted here on the encoder's own thread."""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from gpurender.config import ENCODERS
from gpurender.errors import GpurenderError
from gpurender.outputs import partial_path

log = logging.getLogger(__name__)
WIDTH, HEIGHT = 960, 540


@dataclass(frozen=True)
class EncodeSettings:
    """How every video of a job is encoded."""

    fps: int = 30
    """Frames per second of the output."""
    crf: int = 23
    """Constant rate factor (x264) / constant quality (NVENC): lower is better and larger."""
    preset: str = "ultrafast"
    """libx264 preset; NVENC uses its own p4."""
    threads: int = 1
    """Codec threads per video; videos already encode in parallel, one thread each."""


def configure_opencv_threads() -> None:
    """Switch OpenCV's own thread pool off in this process: frames already convert on one thread
    per video (and warp as one batch in the simulation), and the pool's idle workers spin, taking
    cores the drawing and the encoders need. A process-wide setting, so the process's entry point
    calls it (``pipeline.render`` for the drawing process, the simulation child for its own), not
    a constructor."""
    cv2.setNumThreads(0)


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver shows a GPU here (its device files), without importing CUDA."""
    return any(Path("/dev").glob("nvidia[0-9]*")) or any(Path("/proc/driver/nvidia/gpus").glob("*"))


def nvenc_open_failure(error: BaseException | str, gpu_present: bool) -> str:
    """The user's reading of ``h264_nvenc`` failing to open: FFmpeg reports a missing GPU, a GPU
    without an encoder engine and a missing driver all as one ``avcodec_open2`` error."""
    detail = f"h264_nvenc could not open: {error}"
    if not gpu_present:
        return f"no NVIDIA GPU with an NVENC engine found ({detail})"
    return (f"this NVIDIA GPU has no NVENC engine (H100, H200, A100 and B200 have none) or its driver lacks "
            f"NVENC support ({detail})")


@functools.cache
def nvenc_unavailable_reason() -> str | None:
    """``None`` if an NVENC H.264 session opens here, else why not, in plain words (for the log,
    ``gpurender info`` and ``--encoder nvenc``'s error)."""
    try:
        ctx = av.CodecContext.create("h264_nvenc", "w")
    except Exception as exc:  # codec not built into this FFmpeg
        return f"PyAV's FFmpeg was built without h264_nvenc ({exc})"
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    try:
        ctx.open()
    except Exception as exc:
        return nvenc_open_failure(exc, nvidia_gpu_present())
    return None


def choose_encoder(kind: str) -> tuple[str, str]:
    """-> (codec, reason). ``auto`` takes NVENC when a session opens, else libx264."""
    if kind not in ENCODERS:
        raise GpurenderError(f"unknown --encoder {kind!r}; expected one of {', '.join(ENCODERS)}")
    if kind == "x264":
        codec, reason = "libx264", "requested"
    elif (unavailable := nvenc_unavailable_reason()) is None:
        codec, reason = "h264_nvenc", "NVENC available"
    elif kind == "nvenc":
        raise GpurenderError(f"--encoder nvenc: {unavailable}")
    else:
        codec, reason = "libx264", unavailable
    log.info("encoder %s: %s", codec, reason)
    return codec, reason


# Full-range (JPEG) BT.601 luma/chroma from OpenCV's fixed-point SIMD conversions, mapped to the
# limited ("tv") range the videos are tagged with: Y 16..235, Cb/Cr 16..240 around 128
# (``convertScaleAbs`` rounds like a lookup table would and is SIMD; cv2.LUT is not).
_Y_SCALE, _Y_OFFSET = 219 / 255, 16.0
_C_SCALE, _C_OFFSET = 224 / 255, 128 * (1 - 224 / 255)


class I420Converter:
    """RGB(A) frames -> I420 planes with OpenCV, limited-range BT.601, each chroma sample the mean
    of its 2x2 block: what the GPU's ``yuv420`` pass writes, within +-1 (Y) / +-2 (U, V).

    On a software renderer this is cheaper than the shader pass (every texture fetch is CPU
    time there); OpenCV releases the GIL, so encoder threads convert in parallel. Every
    intermediate lives in buffers reused from frame to frame (fresh large arrays cost page
    faults). One converter per thread; the process's
    entry point calls :func:`configure_opencv_threads` once."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.out = np.empty((height * 3 // 2, width), np.uint8)
        h, w = height, width
        chroma = self.out[h:].reshape(2, h // 2, w // 2)
        self.y, self.u, self.v = self.out[:h], chroma[0], chroma[1]
        self._game = np.empty((h, w // 2, 3), np.uint8)  # the game screen scaled to the right half
        self._gray = np.empty((h, w), np.uint8)
        self._small = np.empty((h // 2, w // 2, 3), np.uint8)
        self._small4 = np.empty((h // 2, w // 2, 4), np.uint8)
        self._ycc = np.empty((h // 2, w // 2, 3), np.uint8)

    def _convert(self, image: np.ndarray, x0: int) -> None:
        """RGB(A) ``image`` -> the planes' columns from ``x0`` (even) on."""
        h, w = image.shape[:2]
        rgba = image.shape[2] == 4
        gray = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY if rgba else cv2.COLOR_RGB2GRAY, dst=self._gray[:h, :w])
        cv2.convertScaleAbs(gray, dst=self.y[:h, x0 : x0 + w], alpha=_Y_SCALE, beta=_Y_OFFSET)
        c0, cw = x0 // 2, w // 2
        small = cv2.resize(image, (cw, h // 2), interpolation=cv2.INTER_AREA,  # 2x2 means
                           dst=(self._small4 if rgba else self._small)[:, :cw])
        ycc = cv2.cvtColor(small, cv2.COLOR_RGB2YCrCb, dst=self._ycc[:, :cw])  # takes RGB or RGBA
        ycc = cv2.convertScaleAbs(ycc, dst=self._small[:, :cw], alpha=_C_SCALE, beta=_C_OFFSET)
        cv2.extractChannel(ycc, 2, dst=self.u[:, c0 : c0 + cw])  # Cb
        cv2.extractChannel(ycc, 1, dst=self.v[:, c0 : c0 + cw])  # Cr

    def rgba(self, rgba: np.ndarray) -> np.ndarray:
        """A whole (540, 960, 4) RGBA frame -> (810, 960) I420 (valid until the next call)."""
        self._convert(rgba, 0)
        return self.out

    def compose(self, panel: np.ndarray, screen: np.ndarray) -> np.ndarray:
        """A frame from its two halves: the drawn panel (540, 480, 4) RGBA on the left, the game
        screen (210, 160, 3) scaled nearest to 480 x 540 on the right (pixel centres, as the
        ``game`` shader samples it) -> (810, 960) I420, as :meth:`rgba` of the whole frame."""
        h, pw = panel.shape[:2]
        self._convert(panel, 0)
        game = cv2.resize(screen, (pw, h), dst=self._game, interpolation=cv2.INTER_NEAREST_EXACT)
        self._convert(game, pw)
        return self.out


def i420_frame(yuv: np.ndarray) -> av.VideoFrame:
    """(810, 960) I420 planes (Y, then U, then V; C-contiguous) -> a new yuv420p ``VideoFrame``:
    the frame ``VideoFrame.from_ndarray(yuv, format="yuv420p")`` makes, byte for byte, its planes
    filled by numpy copies instead of PyAV's own copy (cost: benchmarks/README.md, issue 15)."""
    h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
    frame = av.VideoFrame(w, h, "yuv420p")
    chroma = np.ascontiguousarray(yuv[h:]).reshape(2, h // 2, w // 2)
    for plane, src in zip(frame.planes, (yuv[:h], chroma[0], chroma[1]), strict=True):
        np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width] = src
    return frame


def rgba_to_i420(rgba: np.ndarray) -> np.ndarray:
    """:meth:`I420Converter.rgba` into a new array."""
    return I420Converter(rgba.shape[1], rgba.shape[0]).rgba(rgba).copy()


class VideoWriter:
    """One MP4 (``size``: width, height; 960 x 540 by default) written under a temporary name and
    renamed into place by :meth:`close`.

    :meth:`abort` (Ctrl-C, a crash, a full disk) deletes the partial file, so the final name only
    ever holds a complete, playable video.
    """

    def __init__(self, path: Path, codec: str, settings: EncodeSettings,
                 size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
        self.path = path
        self._converter = I420Converter(*size)
        self.partial = partial_path(path)
        self.frames = 0
        try:
            self.container = av.open(str(self.partial), "w", format="mp4", options={"movflags": "+faststart"})
        except OSError as exc:
            raise GpurenderError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        stream = self.container.add_stream(codec, rate=settings.fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        cc = stream.codec_context
        cc.color_range = 1  # limited ("tv") range: what the shader writes
        cc.colorspace = cc.color_primaries = cc.color_trc = 6  # SMPTE 170M (BT.601)
        if codec == "libx264":
            stream.options = {"crf": str(settings.crf), "preset": settings.preset}
            cc.thread_count = settings.threads
        else:
            stream.options = {"preset": "p4", "rc": "vbr", "cq": str(settings.crf)}
        self.stream = stream

    def write(self, image: np.ndarray | tuple[np.ndarray, np.ndarray]) -> None:
        """One frame: I420 planes (810, 960), RGBA (540, 960, 4), or (panel RGBA, game screen)
        for :meth:`I420Converter.compose` (other sizes alike)."""
        if isinstance(image, tuple):
            yuv = self._converter.compose(*image)
        else:
            yuv = self._converter.rgba(image) if image.ndim == 3 else image
        frame = i420_frame(yuv)
        frame.pts = self.frames
        self.frames += 1
        self._mux(self.stream.encode(frame))

    def _mux(self, packets: list) -> None:
        try:
            self.container.mux(packets)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise GpurenderError(f"no space left on the device writing {self.path}") from None
            raise GpurenderError(f"cannot write {self.partial}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._mux(self.stream.encode(None))
        self.container.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # already broken: the partial file goes anyway
            pass
        self.partial.unlink(missing_ok=True)


class EncoderThread:
    """Runs a :class:`VideoWriter` on its own thread behind a bounded queue (memory stays flat);
    PyAV releases the GIL while encoding, so videos encode in parallel with drawing."""

    def __init__(self, writer: VideoWriter, depth: int = 8) -> None:
        self.writer = writer
        self.queue: queue.Queue[np.ndarray | tuple | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"encode-{writer.path.stem}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                if self.error is None:
                    self.writer.write(item)
        except BaseException as exc:  # handed to the main thread
            self.error = exc
            while self.queue.get() is not None:  # drain so the producer never blocks
                pass

    def submit(self, image: np.ndarray | tuple[np.ndarray, np.ndarray]) -> None:
        """Queue one frame (see :meth:`VideoWriter.write`); blocks while the queue is full."""
        if self.error is not None:
            raise self.error
        self.queue.put(image)

    def finish(self) -> None:
        """Flush, finalise and rename into place; re-raises an encoding error."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            self.writer.abort()
            raise self.error
        self.writer.close()

    def abort(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.writer.abort()
