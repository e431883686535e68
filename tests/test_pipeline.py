"""The render job as the Python API sees it: a plain script, re-runs against existing sidecars,
and the simulation process's lifetime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from _video import cli_env, decode, start_cli, wait_cli

from gpurender.config import RenderConfig
from gpurender.pipeline import RenderCallback, RenderReport, render
from gpurender.trace import read_trace


def test_api_works_from_a_plain_script(ppo_checkpoint: Path, tmp_path: Path):
    """The README's example saved as a script WITHOUT an ``if __name__ == "__main__"`` guard:
    the spawned simulation process must not run the script again."""
    script = tmp_path / "api.py"
    script.write_text(textwrap.dedent(f"""
        from gpurender.config import RenderConfig
        from gpurender.pipeline import render

        report = render(RenderConfig(model_dir=({str(ppo_checkpoint)!r},), output_dir={str(tmp_path / "v")!r},
                                     clip_seconds=1, fps=10, device="cpu"), progress=False)
        print("RENDERED", report.frames, *[v.path for v in report.videos])
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=cli_env(),
                          cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("RENDERED") == 1, proc.stdout
    frames, video = proc.stdout.split("RENDERED")[1].split()
    assert frames == "10" and len(decode(Path(video)).frames) == 10


class _Recorder(RenderCallback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, total_frames: int, title: str) -> None:
        self.calls.append(("start", total_frames))

    def on_frames(self, frames: int) -> None:
        self.calls.append(("frames", frames))

    def on_end(self, report: RenderReport) -> None:
        self.calls.append(("end", report.frames))


def test_rerun_keeps_matching_videos_and_rerenders_changed_ones(ppo_checkpoint: Path, tmp_path: Path, caplog):
    cfg = RenderConfig(model_dir=(ppo_checkpoint,), output_dir=tmp_path, clip_seconds=1, fps=10, device="cpu",
                       trace=True)
    rec = _Recorder()
    first = render(cfg, [rec], progress=False)
    (video,) = [v.path for v in first.videos]
    assert rec.calls[0] == ("start", 10) and rec.calls[-1] == ("end", 10)
    assert sum(n for kind, n in rec.calls if kind == "frames") == 10
    side = json.loads(video.with_suffix(".json").read_text())
    assert side["frames"] == 10 and side["seed"] == 0 and side["trace"] == video.name.replace(".mp4", ".trace.jsonl")
    assert len(read_trace(video.with_suffix(".trace.jsonl"))) == 10

    again = render(cfg, progress=False)
    assert [v.skipped for v in again.videos] == [True] and again.frames == 0

    caplog.set_level("WARNING", logger="gpurender.pipeline")
    longer = render(replace(cfg, clip_seconds=2), progress=False)
    assert [v.skipped for v in longer.videos] == [False] and longer.frames == 20
    assert "frames 10 -> 20" in caplog.text
    assert len(decode(video).frames) == 20
    assert json.loads(video.with_suffix(".json").read_text())["frames"] == 20

    reseeded = render(replace(cfg, clip_seconds=2, seed=5), progress=False)
    assert reseeded.frames == 20 and "seed 0 -> 5" in caplog.text
    assert json.loads(video.with_suffix(".json").read_text())["seed"] == 5


def test_rerun_rerenders_a_video_missing_its_trace_or_saliency_maps(ppo_checkpoint: Path, tmp_path: Path, caplog):
    """A ``--trace --saliency`` video is finished only with its trace and its ``.saliency.npy``."""
    from gpurender.trace import saliency_path, trace_path

    cfg = RenderConfig(model_dir=(ppo_checkpoint,), output_dir=tmp_path, clip_seconds=1, fps=10, device="cpu",
                       trace=True, saliency="gradient")
    (video,) = [v.path for v in render(cfg, progress=False).videos]
    assert render(cfg, progress=False).frames == 0
    caplog.set_level("WARNING", logger="gpurender.pipeline")
    for missing, reason in ((saliency_path(video), f"it has no {saliency_path(video).name}"),
                            (trace_path(video), "it has no trace")):
        missing.unlink()
        again = render(cfg, progress=False)
        assert [v.skipped for v in again.videos] == [False] and again.frames == 10
        assert reason in caplog.text and missing.exists()
    assert render(cfg, progress=False).frames == 0


def test_simulation_dies_with_a_killed_render(ppo_checkpoint: Path, tmp_path: Path):
    """SIGKILL of the render (no handler can run) while its simulation waits for the drawer to
    free a slot: the simulation child does not outlive it."""
    psutil = pytest.importorskip("psutil")
    proc = start_cli("render", "--model-dir", ppo_checkpoint, "--output-dir", tmp_path, "--clip-seconds", "60",
                     "--device", "cpu", "--quiet")
    try:
        deadline = time.monotonic() + 60
        children: list = []
        while not children:
            assert time.monotonic() < deadline and proc.poll() is None, "no simulation process started"
            children = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.05)
        time.sleep(1.0)  # let it get past start-up
        os.kill(proc.pid, signal.SIGSTOP)  # the drawer stops taking steps: the simulation fills its ring
        time.sleep(2.0)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        wait_cli(proc, timeout=30)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "the simulation outlived its render"


def test_stochastic_renders_repeat_with_their_seed(ppo_checkpoint: Path, tmp_path: Path):
    """Sampled actions come from a generator seeded with ``seed``: the same settings render the
    same actions and frames; another seed samples other actions."""
    from gpurender.trace import trace_path

    def run(out: str, seed: int) -> tuple[list[int], list]:
        cfg = RenderConfig(model_dir=(ppo_checkpoint,), output_dir=tmp_path / out, clip_seconds=2, fps=15,
                           device="cpu", stochastic=True, seed=seed, trace=True)
        report = render(cfg, progress=False)
        video = report.videos[0].path
        return [row["action"] for row in read_trace(trace_path(video))], decode(video).frames

    actions_a, frames_a = run("a", 3)
    actions_b, frames_b = run("b", 3)
    actions_c, _ = run("c", 4)
    assert actions_a == actions_b
    assert len(frames_a) == len(frames_b) == 30
    assert all((fa == fb).all() for fa, fb in zip(frames_a, frames_b, strict=True))
    assert actions_a != actions_c  # 30 sampled actions: equal by chance only if the policy were certain
