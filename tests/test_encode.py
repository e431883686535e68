"""Encoding: I420 planes in, playable H.264 MP4 out, written under a hidden partial name until it is
complete; encoder errors reach the caller; encoder selection on a machine without NVENC."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from _video import decode

from gpurender.encode import (
    EncoderThread,
    EncodeSettings,
    I420Converter,
    VideoWriter,
    choose_encoder,
    configure_opencv_threads,
    i420_frame,
    nvenc_open_failure,
    nvenc_unavailable_reason,
    nvidia_gpu_present,
    rgba_to_i420,
)
from gpurender.errors import GpurenderError

W, H = 960, 540
LOSSLESS = EncodeSettings(fps=10, crf=0, preset="ultrafast")


def i420_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """(810, 960) uint8 frames: gradients that move plus noise, different in every plane."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(n):
        y = (16 + (xx + yy + 7 * t) % 220).astype(np.uint8)
        u = rng.integers(16, 241, (H // 2, W // 2), dtype=np.uint8)
        v = (16 + (np.arange(W // 2)[None, :] * 3 + t) % 225).repeat(H // 2, 0).astype(np.uint8)
        frames.append(np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(H * 3 // 2, W))
    return frames


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if "partial" in p.name]


def test_writer_writes_a_hidden_partial_then_renames(tmp_path: Path):
    out = tmp_path / "clip_analytics.mp4"
    writer = VideoWriter(out, "libx264", LOSSLESS)
    frames = i420_frames(5)
    for f in frames:
        writer.write(f)
    (partial,) = partials(tmp_path)
    assert partial.name.startswith(".") and partial.parent == tmp_path
    assert not out.exists()
    writer.close()
    assert out.is_file() and partials(tmp_path) == []
    d = decode(out)
    assert (d.codec, d.width, d.height, d.pix_fmt, d.fps) == ("h264", W, H, "yuv420p", 10.0)
    assert d.color_range == 1  # limited range, BT.601 as the renderer writes it
    assert len(d.frames) == 5
    for i, (got, want) in enumerate(zip(d.frames, frames, strict=True)):  # crf 0: lossless
        assert np.array_equal(got, want), f"frame {i}: planes changed on the way through the encoder"


@pytest.mark.parametrize("n_frames", [0, 40])
def test_abort_removes_the_partial_file(tmp_path: Path, n_frames: int):
    out = tmp_path / "clip.mp4"
    writer = VideoWriter(out, "libx264", EncodeSettings())
    for f in i420_frames(n_frames):
        writer.write(f)
    if n_frames:  # the file appears with the first packet, after x264's lookahead
        assert partials(tmp_path)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_in_an_unwritable_place_is_a_gpurender_error(tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(GpurenderError, match="cannot write"):  # PyAV opens the file with the first packet
        writer = VideoWriter(blocker / "clip.mp4", "libx264", EncodeSettings())
        for f in i420_frames(40):
            writer.write(f)
        writer.close()


def test_encoder_thread_encodes_everything_submitted(tmp_path: Path):
    out = tmp_path / "clip.mp4"
    enc = EncoderThread(VideoWriter(out, "libx264", LOSSLESS), depth=2)
    frames = i420_frames(12, seed=3)
    for f in frames:  # more frames than the queue holds: submit blocks instead of dropping
        enc.submit(f)
    enc.finish()
    d = decode(out)
    assert len(d.frames) == 12
    assert all(np.array_equal(a, b) for a, b in zip(d.frames, frames, strict=True))


def test_encoder_thread_hands_errors_to_the_caller(tmp_path: Path):
    out = tmp_path / "clip.mp4"
    enc = EncoderThread(VideoWriter(out, "libx264", EncodeSettings()))
    for f in i420_frames(30):
        enc.submit(f)
    enc.submit(np.zeros((10, 10, 10), np.uint8))  # not an I420 frame: fails on the encoder thread
    deadline = time.monotonic() + 30
    while enc.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert enc.error is not None
    with pytest.raises(type(enc.error)):
        enc.submit(i420_frames(1)[0])
    with pytest.raises(type(enc.error)):
        enc.finish()
    assert list(tmp_path.iterdir()) == [], "a failed video must leave neither the final nor the partial file"


def test_encoder_thread_abort_removes_the_partial(tmp_path: Path):
    enc = EncoderThread(VideoWriter(tmp_path / "clip.mp4", "libx264", EncodeSettings()))
    for f in i420_frames(4):
        enc.submit(f)
    enc.abort()
    assert not enc.thread.is_alive()
    assert list(tmp_path.iterdir()) == []


def test_choose_encoder():
    assert choose_encoder("x264")[0] == "libx264"
    with pytest.raises(GpurenderError, match="unknown --encoder"):
        choose_encoder("h265")
    if nvenc_unavailable_reason() is None:
        assert choose_encoder("auto")[0] == "h264_nvenc"
        pytest.skip("this machine has NVENC: the fallback is not exercised")
    with pytest.raises(GpurenderError, match="nvenc"):
        choose_encoder("nvenc")
    codec, reason = choose_encoder("auto")
    assert codec == "libx264" and reason == nvenc_unavailable_reason()


def test_nvenc_reason_is_plain_words():
    """FFmpeg says ``PermissionError ... avcodec_open2`` for a machine with no GPU at all: the
    reason says what is missing, and keeps FFmpeg's words in parentheses."""
    error = PermissionError(1, "Operation not permitted", 'avcodec_open2("h264_nvenc", {})')
    no_gpu = nvenc_open_failure(error, gpu_present=False)
    assert no_gpu.startswith("no NVIDIA GPU with an NVENC engine found (h264_nvenc could not open: ")
    assert "avcodec_open2" in no_gpu and not no_gpu.startswith("PermissionError")
    no_engine = nvenc_open_failure(error, gpu_present=True)
    assert no_engine.startswith("this NVIDIA GPU has no NVENC engine") and "H100" in no_engine
    reason = nvenc_unavailable_reason()  # this machine's
    if reason is None:
        pytest.skip("this machine has NVENC")
    assert not reason.startswith(("PermissionError", "no NVENC engine usable")), reason
    if "could not open" in reason:
        assert reason.startswith("this NVIDIA GPU" if nvidia_gpu_present() else "no NVIDIA GPU"), reason
    with pytest.raises(GpurenderError, match=r"^--encoder nvenc: (no NVIDIA GPU|this NVIDIA GPU|PyAV's FFmpeg)"):
        choose_encoder("nvenc")


def test_converter_leaves_opencv_threads_to_the_process_entry():
    """Making a converter changes no process-wide setting; configure_opencv_threads() is the one
    call that switches OpenCV's pool off."""
    import cv2

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        I420Converter()
        rgba_to_i420(np.zeros((H, W, 4), np.uint8))
        assert cv2.getNumThreads() == 2
        configure_opencv_threads()
        assert cv2.getNumThreads() <= 1  # OpenCV reports 0 threads as 1 on some builds
    finally:
        cv2.setNumThreads(before)


def test_rgba_to_i420_is_limited_range_bt601_with_box_chroma():
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    rgba[:100, :200] = (255, 255, 255, 255)  # range ends: white -> Y 235, black -> Y 16, U = V = 128
    rgba[100:200, :200] = (0, 0, 0, 255)
    yuv = rgba_to_i420(rgba)
    assert yuv.shape == (H * 3 // 2, W) and yuv.dtype == np.uint8
    c = rgba[..., :3].astype(np.float64) / 255
    want_y = 16 + c @ np.array([65.481, 128.553, 24.966])
    m = c.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3))
    want_u = 128 + m @ np.array([-37.797, -74.203, 112.0])
    want_v = 128 + m @ np.array([112.0, -93.786, -18.214])
    y = yuv[:H]
    u, v = yuv[H:].reshape(2, H // 2, W // 2)
    assert np.abs(y - want_y).max() <= 1 and np.abs(u - want_u).max() <= 2 and np.abs(v - want_v).max() <= 2
    assert (y[:100, :200] == 235).all() and (y[100:200, :200] == 16).all()
    assert (u[:100, :100] == 128).all() and (v[:100, :100] == 128).all()


def test_converter_reuses_its_planes_and_writes_the_game_half():
    """compose(): panel on the left, the screen scaled nearest (pixel centres) on the right."""
    conv = I420Converter()
    panel = np.zeros((H, W // 2, 4), np.uint8)
    screen = np.zeros((210, 160, 3), np.uint8)
    screen[:, 80:] = 255  # right half of the screen white
    out = conv.compose(panel, screen)
    assert out is conv.out and conv.compose(panel, screen) is out  # no per-frame allocation
    y = out[:H]
    assert (y[:, : W // 2] == 16).all()  # black panel
    xs = np.floor((np.arange(W // 2) + 0.5) * 160 / (W // 2)).astype(int)
    assert np.array_equal(y[:, W // 2 :] == 235, np.broadcast_to(xs >= 80, (H, W // 2)))


def test_i420_frame_is_pyavs_own_frame_of_the_planes():
    """The writer's frames hold the bytes PyAV's ``from_ndarray`` would put in each plane."""
    import av

    for yuv in i420_frames(2, seed=3):
        got, want = i420_frame(yuv), av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        assert (got.width, got.height, got.format.name) == (want.width, want.height, want.format.name)
        for a, b in zip(got.planes, want.planes, strict=True):
            assert a.line_size == b.line_size and bytes(a) == bytes(b)
        assert np.array_equal(got.to_ndarray(), yuv)


def test_writer_takes_rgba_and_panel_plus_screen(tmp_path: Path):
    """The two software-renderer inputs encode to the frames they describe (lossless)."""
    out = tmp_path / "clip.mp4"
    writer = VideoWriter(out, "libx264", LOSSLESS)
    rng = np.random.default_rng(4)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    panel, screen = rgba[:, : W // 2].copy(), rng.integers(0, 256, (210, 160, 3), dtype=np.uint8)
    writer.write(rgba)
    writer.write((panel, screen))
    writer.close()
    got = decode(out).frames
    assert np.array_equal(got[0], rgba_to_i420(rgba))
    assert np.array_equal(got[1], I420Converter().compose(panel, screen))
