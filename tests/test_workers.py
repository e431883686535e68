"""Sharded renders on one machine (``--workers``) and several writers in one output folder:
shards write the videos one pipeline writes, a killed shard costs only its own videos, and two
renders into one folder never write a milestone twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from _video import decode, message_lines, run_cli, start_cli, wait_cli

from gpurender.config import ConfigError, RenderConfig
from gpurender.demo import demo_checkpoints
from gpurender.milestones import find_milestones
from gpurender.outputs import MilestoneLocks, partial_path, remove_dead_writers_partials, remove_partials
from gpurender.shards import Shard, auto_workers, plan_shards, shard_device
from gpurender.trace import read_trace, trace_path

GIB = 1 << 30


def _milestones(n: int):
    return find_milestones(tuple(demo_checkpoints()))[:n]


def _videos(shards: list[Shard]) -> list[tuple[str, int]]:
    return [(m.label, e) for s in shards for m in s.milestones for e in s.envs]


# ---------------------------------------------------------------------------------------------
# Planning


@pytest.mark.parametrize(("milestones", "envs", "n"), [(4, 1, 2), (4, 1, 3), (2, 2, 3), (1, 4, 4), (4, 2, 16)])
def test_every_video_is_in_exactly_one_shard_and_shards_are_balanced(milestones, envs, n):
    ms = _milestones(milestones)
    shards = plan_shards(ms, envs, n)
    assert sorted(_videos(shards)) == sorted((m.label, e) for m in ms for e in range(envs))
    assert len(shards) == min(n, milestones * envs)
    sizes = [s.videos for s in shards]
    assert max(sizes) - min(sizes) <= 1, sizes
    assert [s.index for s in shards] == list(range(len(shards)))


def test_whole_milestones_while_there_are_enough_then_envs_are_split():
    ms = _milestones(4)
    assert all(s.envs == (0, 1) for s in plan_shards(ms, 2, 4))  # 4 milestones, 4 shards: whole
    split = plan_shards(ms[:1], 4, 3)  # one milestone's 4 games on 3 shards
    assert [s.envs for s in split] == [(0, 1), (2,), (3,)]


def test_auto_workers_rule():
    # the 2-core VM: one pipeline already keeps both cores busy
    assert auto_workers(16, cores=2, gpus=0, memory=20 * GIB) == 1
    assert auto_workers(16, cores=16, gpus=0, memory=100 * GIB) == 4
    assert auto_workers(16, cores=16, gpus=8, memory=100 * GIB) == 8  # every GPU draws
    assert auto_workers(16, cores=64, gpus=0, memory=5 * GIB) == 2  # memory bounds it
    assert auto_workers(3, cores=64, gpus=8, memory=100 * GIB) == 3  # no more shards than videos


def test_shard_i_uses_gpu_i_mod_g():
    cfg = RenderConfig()
    shards = plan_shards(_milestones(4), 1, 4)
    assert [shard_device(cfg, s, 2)[0].device for s in shards] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert [shard_device(cfg, s, 2)[1] for s in shards] == [0, 1, 0, 1]  # EGL device too
    assert shard_device(cfg, shards[3], 1) == (RenderConfig(device="cuda:0"), None)  # one GPU: EGL's default
    assert shard_device(RenderConfig(device="cpu"), shards[1], 2) == (RenderConfig(device="cpu"), None)
    assert shard_device(cfg, shards[1], 0) == (cfg, None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "many", True])
def test_workers_must_be_a_positive_number_or_auto(bad):
    with pytest.raises(ConfigError, match=r"--workers must be a whole number >= 1 or auto"):
        RenderConfig(workers=bad)
    assert RenderConfig(workers="auto").workers == "auto" and RenderConfig(workers=3.0).workers == 3


def test_bad_workers_flag_is_a_one_line_error(tmp_path: Path):
    proc = run_cli("render", "--demo", "--output-dir", tmp_path, "--workers", "0")
    assert proc.returncode == 2
    assert message_lines(proc.stderr) == ["gpurender: error: --workers must be a whole number >= 1 or auto, got 0"]


# ---------------------------------------------------------------------------------------------
# Partial names and locks


def test_partial_names_are_unique_per_writer(tmp_path: Path):
    video = tmp_path / "a.mp4"
    mine, again, other = partial_path(video), partial_path(video), partial_path(video, pid=1)
    assert len({mine, again, other}) == 3 and all(p.name.startswith(".a.mp4.") for p in (mine, other))
    for p in (mine, again, other):
        p.write_bytes(b"x")
    assert sorted(remove_partials(tmp_path, os.getpid())) == sorted([mine, again])
    assert other.exists()


def test_partials_of_dead_writers_on_this_machine_are_removed(tmp_path: Path):
    video = tmp_path / "a.mp4"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live, dead = partial_path(video), partial_path(video, pid=gone.pid)
    elsewhere = tmp_path / f".a.mp4.otherhost-{gone.pid}-0badc0de.partial"  # another machine's writer
    for p in (live, dead, elsewhere):
        p.write_bytes(b"x")
    assert remove_dead_writers_partials(tmp_path) == [dead]
    assert live.exists() and elsewhere.exists()


def test_a_lock_names_its_holder_and_dies_with_it(tmp_path: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gpurender.outputs import MilestoneLocks; "
         "locks = MilestoneLocks(sys.argv[1]); assert locks.try_acquire('a.mp4') is None; "
         "print('held', flush=True); time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with MilestoneLocks(tmp_path) as locks:
            assert locks.try_acquire("a.mp4") == holder.pid
            assert locks.try_acquire("b.mp4") is None  # other milestones are free
    finally:
        holder.kill()
        holder.wait()
    with MilestoneLocks(tmp_path) as locks:  # killed: the kernel released its lock
        assert locks.try_acquire("a.mp4") is None
    assert [p.name for p in tmp_path.iterdir()] == []  # released locks are removed


# ---------------------------------------------------------------------------------------------
# Whole renders


def _render(out: Path, *extra: str, milestones: str = "0,100", seconds: str = "1") -> subprocess.CompletedProcess:
    return run_cli("render", "--demo", "--milestones", milestones, "--clip-seconds", seconds, "--device", "cpu",
                   "--output-dir", out, *extra)


def _frames(out: Path) -> dict[str, list]:
    return {p.name: decode(p).frames for p in sorted(out.glob("*.mp4"))}


def _no_leftovers(out: Path) -> None:
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [], f"partial or lock files left behind: {hidden}"


@pytest.fixture(scope="module")
def one_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: 2 milestones x 2 games in one pipeline."""
    out = tmp_path_factory.mktemp("workers1")
    proc = _render(out, "--envs-per-milestone", "2", "--trace", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


def test_shards_write_the_videos_one_pipeline_writes(one_pipeline: Path, tmp_path: Path):
    """3 shards of 2 milestones x 2 games: milestone 100's games in one shard, milestone 0's split
    between two (``plan_shards``). A whole milestone's videos are the one pipeline's, frame for
    frame. A split one runs batch-1 forwards instead of one forward of 2, whose float rounding
    differs: the same actions and scores, numbers within 1e-6, and under 0.1 % of the decoded
    pixels a few levels off (x264 codes a source that differs by a level here and there)."""
    proc = _render(tmp_path, "--envs-per-milestone", "2", "--workers", "3", "--trace")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "x2 milestones, 3 workers" in proc.stderr  # one progress bar for the job
    want, got = _frames(one_pipeline), _frames(tmp_path)
    assert sorted(got) == sorted(want) and len(got) == 4
    for name, frames in want.items():
        assert len(got[name]) == len(frames) == 30
        ours, theirs = (read_trace(trace_path(d / name)) for d in (tmp_path, one_pipeline))
        assert [r["action"] for r in ours] == [r["action"] for r in theirs]
        for key in ("probs", "value", "levels"):
            diff = max(np.abs(np.subtract(a[key], b[key])).max() for a, b in zip(ours, theirs, strict=True))
            assert diff <= (0.0 if "pct_100" in name else 1e-6), f"{name} {key}: {diff}"
        for t, (a, b) in enumerate(zip(frames, got[name], strict=True)):
            if "pct_100" in name:
                assert (a == b).all(), f"{name} frame {t} differs from the one-pipeline render"
            else:
                off = np.abs(a.astype(np.int16) - b)
                assert off.max() <= 16 and (off > 0).mean() < 1e-3, f"{name} frame {t}: {off.max()}, {(off > 0).mean()}"
        ours, theirs = (json.loads((d / name).with_suffix(".json").read_text()) for d in (tmp_path, one_pipeline))
        assert ours["episode_returns"] == theirs["episode_returns"]
        assert ours["unfinished_episode_score"] == theirs["unfinished_episode_score"]
    # one summary for the whole job
    rows = [line for line in proc.stdout.splitlines() if "_analytics.mp4" in line]
    assert len(rows) == 4
    assert "120 frames in" in proc.stdout
    _no_leftovers(tmp_path)


def _shard_processes(cli: psutil.Process, n: int, timeout: float = 120) -> list[psutil.Process]:
    """The render's ``n`` shard processes (its spawned children, not the resource tracker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in cli.children() if "resource_tracker" not in " ".join(k.cmdline())]
        if len(kids) == n:
            return kids
        time.sleep(0.1)
    raise AssertionError(f"expected {n} shard processes, found {cli.children()}")


def test_a_killed_shard_costs_only_its_own_videos_and_a_rerun_finishes_them(tmp_path: Path):
    args = ("render", "--demo", "--clip-seconds", "5", "--device", "cpu", "--output-dir", tmp_path, "--workers", "2",
            "--quiet")
    proc = start_cli(*args)
    try:
        victim = _shard_processes(psutil.Process(proc.pid), 2)[1]
        deadline = time.monotonic() + 120
        while not any("partial" in p.name for p in tmp_path.iterdir()):  # both shards drawing
            assert time.monotonic() < deadline and proc.poll() is None, "no partial video appeared"
            time.sleep(0.05)
        sims = victim.children(recursive=True)
        victim.kill()
    finally:
        result = wait_cli(proc)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    failed = [line for line in message_lines(result.stderr) if line.startswith("gpurender: failed: ")]
    assert len(failed) == 2, result.stderr  # the killed shard's two milestones, each named
    assert all("the worker process died (killed by SIGKILL)" in line for line in failed)
    finished = sorted(tmp_path.glob("*.mp4"))
    assert len(finished) == 2
    for video in finished:
        assert len(decode(video).frames) == 150 and video.with_suffix(".json").exists()
    _no_leftovers(tmp_path)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sims), "its simulation outlived it"

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (exists") == 2, again.stdout  # only the lost ones rendered
    assert len(list(tmp_path.glob("*.mp4"))) == 4
    _no_leftovers(tmp_path)


def test_two_renders_into_one_folder_write_each_milestone_once(tmp_path: Path):
    args = ("render", "--demo", "--clip-seconds", "1", "--device", "cpu", "--output-dir", tmp_path, "--quiet")
    procs = [start_cli(*args) for _ in range(2)]
    results = [wait_cli(p) for p in procs]
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
    rendered = [line.split()[0] for r in results for line in r.stdout.splitlines()
                if "_analytics.mp4" in line and "skipped" not in line]
    assert sorted(rendered) == ["0%", "100%", "25%", "50%"], [r.stdout for r in results]  # each exactly once
    for video in tmp_path.glob("*.mp4"):
        assert len(decode(video).frames) == 30
    assert len(list(tmp_path.glob("*.mp4"))) == 4
    _no_leftovers(tmp_path)
