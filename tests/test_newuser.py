"""What a new user meets first, run for real in subprocesses: ``gpurender demo`` (its videos, its
captioned contact sheet, one ALE banner at most, ``-v`` after the subcommand) and
``gpurender preview --demo``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _video import decode, message_lines, run_cli

from gpurender.demo import CAPTION_BACKGROUND

BANNER = "A.L.E: Arcade Learning Environment"
MILESTONES = ("0%", "25%", "50%", "100%")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``gpurender demo -v`` on the four bundled checkpoints, 5 frames each."""
    out = tmp_path_factory.mktemp("demo")
    proc = run_cli("demo", "-v", "--output-dir", out, "--clip-seconds", "1", "--fps", "5", "--device", "cpu",
                   "--encoder", "x264", "--quiet")
    return proc, out


def test_demo_renders_every_bundled_milestone(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("*_analytics.mp4"))) == len(MILESTONES)
    table = proc.stdout.splitlines()
    assert [line.split()[0] for line in table[2 : 2 + len(MILESTONES)]] == list(MILESTONES)
    assert f"contact sheet: {(out / 'contact_sheet.png').resolve()}" in proc.stdout


def test_demo_writes_the_progress_video(demo_run):
    """The run's progress video: the 5 clip frames of the 2x2 grid, then the 4 s closing card
    at 5 frames/s; its chart beside it."""
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    video = decode(out / "training_progress_grid.mp4")
    assert len(video.frames) == 5 + 4 * 5
    assert (video.width, video.height) == (1920, 1080)
    assert (out / "training_progress_grid_scores.png").is_file()
    assert f"progress video (grid, {len(MILESTONES)} milestones" in proc.stdout


def test_ale_banner_at_most_once_and_verbose_after_the_subcommand(demo_run):
    """The banner came twice (action names read in the drawing process and in the simulation
    child); ``-v`` given after ``demo`` was rejected."""
    proc, _ = demo_run
    assert proc.returncode == 0, proc.stderr
    banners = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(BANNER)]
    assert len(banners) <= 1, proc.stdout + proc.stderr
    assert "gpurender: encoder libx264: requested" in message_lines(proc.stderr)


def test_contact_sheet_captions_each_milestone(demo_run):
    """Under each tile, a band with its milestone written in it; each band different."""
    from PIL import Image

    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    tile_w, tile_h = 480, 270  # the 960 x 540 frame at the default scale 0.5
    assert sheet.shape[1] == tile_w * len(MILESTONES) and sheet.shape[0] > tile_h + 10, sheet.shape
    bands = [sheet[tile_h:, i * tile_w : (i + 1) * tile_w] for i in range(len(MILESTONES))]
    for label, band in zip(MILESTONES, bands, strict=True):
        ink = np.any(band != CAPTION_BACKGROUND, axis=2)
        assert ink.sum() > 30 * len(label), f"no caption under the {label} tile"
        cols = np.flatnonzero(ink.any(axis=0))
        assert abs((cols[0] + cols[-1]) / 2 - tile_w / 2) < 8, f"the {label} caption is not centred"
    for a in range(len(bands)):
        for b in range(a + 1, len(bands)):
            assert not np.array_equal(bands[a], bands[b]), f"{MILESTONES[a]} and {MILESTONES[b]} have one caption"


@pytest.mark.display
def test_preview_demo_plays_the_bundled_checkpoints(tmp_path: Path):
    if not os.environ.get("DISPLAY"):
        pytest.skip("no DISPLAY: run under xvfb-run -a")
    proc = run_cli("preview", "--demo", "--milestones", "100", "--max-frames", "3", "--uncapped", "--device", "cpu",
                   "--encoder", "x264", "--output-dir", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and message_lines(proc.stderr) == [], proc.stderr
