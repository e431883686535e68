"""Test helpers: decode MP4s with PyAV, run the CLI in a subprocess, compare golden images."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
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


