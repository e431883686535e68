"""MilestoneVideoCallback in real PPO trainings on Breakout (SB3's make_atari_env + VecFrameStack,
CPU): milestone checkpoints and their videos appear while ``learn`` runs, under the names
gpurender reads; a failing render is logged and training goes on; the total comes from ``learn``
when not given; continued runs (``reset_num_timesteps=False``) keep one label per percentage.

Training takes 128 steps per rollout (4 envs x 32 steps, one epoch), torch on one thread, so the
background renders (1 s clips) get the other core."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from _video import decode
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from gpurender.errors import GpurenderError
from gpurender.milestones import find_milestones
from gpurender.sb3 import MilestoneVideoCallback

ROLLOUT = 128
CLIP = {"clip_seconds": 1, "fps": 10}
WAIT = 120.0
"""Longest a probe holds training up for a background render (they take ~5-10 s here)."""


@pytest.fixture(scope="module")
def venv4():
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    venv = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=4, seed=0), n_stack=4)
    yield venv
    venv.close()


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ppo(venv, rollout: int = ROLLOUT) -> PPO:
    return PPO("CnnPolicy", venv, n_steps=rollout // 4, batch_size=rollout, n_epochs=1, seed=0, device="cpu")


class Probe(BaseCallback):
    """Once training reaches ``at`` steps, holds it (inside ``learn``) until ``ready()`` or
    :data:`WAIT` seconds, and notes the step, the time and which files were there then."""

    def __init__(self, at: int, ready, folders: tuple[Path, ...]) -> None:
        super().__init__()
        self.at, self.ready, self.folders = at, ready, folders
        self.step: int | None = None
        self.when = 0.0
        self.files: set[str] = set()
        self.first_step_files: set[str] | None = None

    def _files(self, folders: tuple[Path, ...] | None = None) -> set[str]:
        return {p.name for f in folders or self.folders if f.is_dir() for p in f.iterdir()}

    def _on_step(self) -> bool:
        if self.first_step_files is None:
            self.first_step_files = self._files(self.folders[:1])
        if self.step is None and self.num_timesteps >= self.at:
            deadline = time.monotonic() + WAIT
            while not self.ready() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.step, self.when, self.files = self.num_timesteps, time.monotonic(), self._files()
        return True


def test_milestones_render_while_training(venv4, tmp_path: Path) -> None:
    """No total given: it is learn's. 0 % is saved before the first step and its video appears
    while learn runs; 100 % is saved once, from the weights learn returns, even though the last
    rollout's steps land exactly on the total. (Milestones in between: the next test.)"""
    total = 6 * ROLLOUT
    save_dir, video_dir = tmp_path / "run" / "milestones", tmp_path / "run" / "videos"
    cb = MilestoneVideoCallback(milestones=[0, 100], save_dir=save_dir, render_options=CLIP)
    first_video = video_dir / "step_post_training_pct_0_analytics.mp4"
    sidecar = first_video.with_suffix(".json")  # written after the video
    probe = Probe(3 * ROLLOUT, sidecar.exists, (save_dir, video_dir))
    model = ppo(venv4)
    seen_by_thread: dict[str, float] = {}
    watching = threading.Event()

    def watch() -> None:  # a second witness, outside the training thread
        while not watching.is_set():
            for p in video_dir.glob("*.mp4") if video_dir.is_dir() else ():
                seen_by_thread.setdefault(p.name, time.monotonic())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        model.learn(total, callback=[cb, probe])
        learn_returned = time.monotonic()
    finally:
        watching.set()
        watcher.join()

    assert cb.video_dir == video_dir and cb.save_dir == save_dir
    # while learn ran: the 0 % checkpoint from the start, and its video, made by another process
    assert probe.first_step_files == {"step_0_pct_0.zip"}
    assert probe.step is not None and probe.step < total
    assert {"step_0_pct_0.zip", first_video.name, sidecar.name} <= probe.files
    assert seen_by_thread[first_video.name] < probe.when < learn_returned

    # the names gpurender reads; 100 % exactly once, at the end, with the weights learn returned
    assert sorted(p.name for p in save_dir.iterdir()) == ["step_0_pct_0.zip", f"step_{total}_pct_100.zip"]
    found = find_milestones([save_dir.parent])
    assert [(m.label, m.steps) for m in found] == [("0", 0), ("100", total)]
    final = PPO.load(save_dir / f"step_{total}_pct_100.zip", device="cpu").policy.state_dict()
    for name, tensor in model.policy.state_dict().items():
        assert torch.equal(final[name], tensor), name
    assert [s.steps for s in cb.saved] == [0, total]

    # wait=True: every video is there when learn returns, complete and decodable
    assert [(r.milestone.pct, r.ok) for r in cb.results] == [(0, True), (100, True)]
    assert all(r.command[r.command.index("--device") + 1] == "cpu" for r in cb.results)
    assert sorted(p.name for p in video_dir.iterdir()) == sorted(
        f"step_post_training_pct_{p}_analytics.{ext}" for p in (0, 100) for ext in ("json", "mp4"))
    for m in found:
        video = decode(video_dir / m.video_name)
        assert (video.codec, video.width, video.height, len(video.frames)) == ("h264", 960, 540, 10)


def test_failed_render_is_logged_and_training_goes_on(venv4, tmp_path: Path, caplog) -> None:
    """A render that fails (a Breakout agent rendered as Pong) while training runs: logged in one
    line with the command that finishes it, its output kept; training runs to its end; the
    checkpoint stays. The progress video command failing (here on a bad layout passed through
    progress_args), or missing from this gpurender, is logged the same harmless way."""
    caplog.set_level(logging.WARNING, logger="gpurender.sb3")
    total = 2 * ROLLOUT
    save_dir = tmp_path / "milestones"
    cb = MilestoneVideoCallback(total_timesteps=total, milestones=[0], save_dir=save_dir,
                                render_options={**CLIP, "game": "Pong"}, progress_video=True,
                                progress_args=["--layout", "nope"])
    probe = Probe(ROLLOUT, lambda: bool(cb.failures), ())
    model = ppo(venv4)
    model.learn(total, callback=[cb, probe])

    assert probe.step is not None and probe.step < total  # the failure came while training ran
    assert model.num_timesteps == total
    [failed, progress] = cb.results
    assert failed.milestone is not None and failed.milestone.path == save_dir / "step_0_pct_0.zip"
    assert failed.milestone.path.is_file()
    assert failed.returncode not in (0, None)
    assert "the agent has 4 actions but Pong has 6" in failed.error and "\n" not in failed.error
    assert failed.log == save_dir / "step_0_pct_0.render.log" and failed.log.is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("the 0% milestone (step 0) failed: " in w and "Pong has 6" in w and "training goes on" in w
               and f"gpurender render --model-dir {save_dir}" in w for w in warnings), warnings
    assert progress.milestone is None and not progress.ok
    assert progress.command[:3] == ("progress", "--model-dir", str(save_dir)) and progress.command[-2:] == (
        "--layout", "nope")
    assert any("progress video" in w or "no `progress` command" in w for w in warnings), warnings
    assert not (tmp_path / "videos").exists() or not list((tmp_path / "videos").glob("*.mp4"))
    assert cb.finish_command().startswith(f"gpurender render --model-dir {save_dir} --output-dir {tmp_path / 'videos'}")


def test_continued_runs_keep_one_schedule(venv4, tmp_path: Path) -> None:
    """reset_num_timesteps=False: learn's total counts the steps already done, passed milestones
    are not saved again, and an earlier schedule's checkpoint of the same label moves aside. With
    the whole run's total given, two learn calls make one schedule."""
    r = 64  # steps per rollout: saves only, no renders
    folder = tmp_path / "a"
    model = ppo(venv4, r)
    model.learn(2 * r, callback=MilestoneVideoCallback(milestones=[0, 50, 100], save_dir=folder, render=False))
    assert sorted(p.name for p in folder.glob("*.zip")) == ["step_0_pct_0.zip", "step_128_pct_100.zip",
                                                            "step_64_pct_50.zip"]
    cb = MilestoneVideoCallback(milestones=[0, 50, 100], save_dir=folder, render=False)
    model.learn(2 * r, callback=cb, reset_num_timesteps=False)  # total 256: 0 and 50 % passed
    assert [(s.pct, s.steps) for s in cb.saved] == [(100, 256)]
    assert sorted(p.name for p in folder.glob("*.zip")) == ["step_0_pct_0.zip", "step_256_pct_100.zip",
                                                            "step_64_pct_50.zip"]
    assert [p.name for p in (folder / "superseded").iterdir()] == ["step_128_pct_100.zip"]
    assert [m.label for m in find_milestones([folder])] == ["0", "50", "100"]

    folder = tmp_path / "b"
    model = ppo(venv4, r)
    cb = MilestoneVideoCallback(total_timesteps=4 * r, save_dir=folder, render=False)
    model.learn(2 * r, callback=cb)
    model.learn(2 * r, callback=cb, reset_num_timesteps=False)
    assert [(s.pct, s.steps) for s in cb.saved] == [(0, 0), (25, 64), (50, 128), (75, 192), (100, 256)]
    assert not (folder / "superseded").exists()


def test_bad_settings_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(GpurenderError, match="render_options clip_seconds must be a positive"):
        MilestoneVideoCallback(render_options={"clip_seconds": 0})
    with pytest.raises(GpurenderError, match="render_options: unknown clip_second "):
        MilestoneVideoCallback(render_options={"clip_second": 5})
    with pytest.raises(GpurenderError, match="render_options model_dir: set by the callback"):
        MilestoneVideoCallback(render_options={"model_dir": "x"})
    with pytest.raises(GpurenderError, match=r"milestone 150\.0: must be a percentage"):
        MilestoneVideoCallback(milestones=[0, 150])
    with pytest.raises(GpurenderError, match="total_timesteps must be a whole number"):
        MilestoneVideoCallback(total_timesteps=0)
    cb = MilestoneVideoCallback(total_timesteps=1e6, milestones="0,12.5,100", save_dir=tmp_path / "run" / "milestones",
                                render_options={"clip_seconds": 30, "stochastic": True, "stack_forwards": False})
    assert cb.total_timesteps == 1_000_000 and cb.milestones == (0, 12.5, 100)
    assert cb.finish_command() == (f"gpurender render --model-dir {tmp_path}/run/milestones --output-dir "
                                   f"{tmp_path}/run/videos --device cpu --clip-seconds 30 --stochastic "
                                   "--stack-forwards off")


def test_default_folders(venv4, tmp_path: Path, monkeypatch) -> None:
    """Without save_dir: <logger folder>/milestones when SB3's logger writes files there (videos
    beside it), else ./milestones; never SB3's temporary logger folder."""
    from stable_baselines3.common.logger import configure

    model = ppo(venv4, 64)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    cb = MilestoneVideoCallback(milestones=[0], render=False)
    model.learn(64, callback=cb)
    assert (cb.save_dir, cb.video_dir) == (tmp_path / "log" / "milestones", tmp_path / "log" / "videos")
    assert (tmp_path / "log" / "milestones" / "step_0_pct_0.zip").is_file()

    monkeypatch.chdir(tmp_path)
    model = ppo(venv4, 64)  # its own logger: stdout at most, no files
    cb = MilestoneVideoCallback(milestones=[0], render=False)
    model.learn(64, callback=cb)
    assert (cb.save_dir, cb.video_dir) == (tmp_path / "milestones", tmp_path / "videos")
    assert [p.name for p in (tmp_path / "milestones").iterdir()] == ["step_0_pct_0.zip"]
