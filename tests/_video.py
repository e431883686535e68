"""Test helpers: decode MP4s with PyAV, run the CLI in a subprocess, compare golden images."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
DIFF = GOLDEN / "_diff"
UPDATE_GOLDEN = os.environ.get("GPURENDER_UPDATE_GOLDEN") == "1"
_BANNER = ("A.L.E: Arcade Learning Environment", "[Powered by Stella]")


@dataclass
class Decoded:
    """What a player sees in an MP4, every frame decoded."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    fps: float
    color_range: int
    frames: list[np.ndarray]
    """(810, 960) uint8 I420 planes of each frame, in presentation order."""


def decode(path: Path) -> Decoded:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        frames = [f.to_ndarray(format="yuv420p") for f in container.decode(stream)]
        return Decoded(cc.name, stream.width, stream.height, cc.pix_fmt, float(stream.average_rate),
                       int(cc.color_range), frames)


def start_cli(*args: str | Path) -> subprocess.Popen:
    """``python -m gpurender ARGS`` from a fresh interpreter that imports this checkout."""
    return subprocess.Popen([sys.executable, "-m", "gpurender", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO)


def wait_cli(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_cli(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return wait_cli(start_cli(*args), timeout)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    return env


def message_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines, without the banner ale-py prints when a ROM loads."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(_BANNER)]


def check_golden(image: np.ndarray, name: str, mean_tol: float = 1.0, p99_tol: float = 8.0,
                 moved_tol: int = 100) -> None:
    """Compare an RGB frame with ``tests/golden/<name>.png``; on failure write the frame and an
    image of golden | frame | amplified difference to ``tests/golden/_diff/``.

    Passes when the mean absolute difference is under ``mean_tol``, its 99th percentile under
    ``p99_tol`` and at most ``moved_tol`` pixels differ by more than 32 levels: rasteriser noise
    and small colour changes pass, anything that moves (a text line shifted by a pixel) does not.
    ``GPURENDER_UPDATE_GOLDEN=1`` rewrites the golden instead.
    """
    path = GOLDEN / f"{name}.png"
    if UPDATE_GOLDEN:
        GOLDEN.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
        return
    if not path.is_file():
        raise AssertionError(f"no golden image {path}; create it with GPURENDER_UPDATE_GOLDEN=1")
    ref = np.asarray(Image.open(path).convert("RGB"))
    assert ref.shape == image.shape, f"{name}: golden is {ref.shape}, frame is {image.shape}"
    diff = np.abs(image.astype(np.int16) - ref.astype(np.int16))
    mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
    moved = int(np.count_nonzero(diff.max(axis=2) > 32))
    if mean < mean_tol and p99 < p99_tol and moved <= moved_tol:
        return
    DIFF.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(DIFF / f"{name}.png")
    amplified = np.clip(diff.max(axis=2) * 8, 0, 255).astype(np.uint8)
    Image.fromarray(np.concatenate([ref, image, np.repeat(amplified[..., None], 3, axis=2)], axis=1)).save(
        DIFF / f"{name}_golden_frame_diff.png")
    raise AssertionError(
        f"{name}: differs from {path}: mean abs diff {mean:.3f} (< {mean_tol}), 99th percentile {p99:.1f} "
        f"(< {p99_tol}), {moved} pixels off by > 32 (<= {moved_tol}); see {DIFF}, and if the change is "
        "intended rerun with GPURENDER_UPDATE_GOLDEN=1")
