"""Train the bundled demo agent: PPO CnnPolicy on Breakout with SB3's standard Atari set-up.

This is the script that produced the checkpoints in ``gpurender/demo/``. It uses exactly what real
users use — ``make_atari_env`` + ``VecFrameStack(4)`` and rl-zoo's PPO Atari hyper-parameters — and
saves a checkpoint at each milestone percentage of training, named the way gpurender recognises
(``milestones/step_<N>_pct_<P>.zip``). At the end each milestone is scored with SB3's
``evaluate_policy`` and the figures are written to ``benchmarks/results/train_demo.json``.

    python benchmarks/train_demo.py --timesteps 400000 --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import ale_py
import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecFrameStack

gym.register_envs(ale_py)


def linear(start: float):
    """rl-zoo's ``lin_`` schedule: decays from ``start`` to 0 over training."""
    return lambda progress_remaining: progress_remaining * start


class MilestoneCheckpoints(BaseCallback):
    """Save the model when training passes each milestone percentage."""

    def __init__(self, total: int, pcts: list[int], folder: Path) -> None:
        super().__init__()
        self.total, self.pcts, self.folder = total, sorted(pcts), folder
        self.saved: dict[int, Path] = {}

    def _save(self, pct: int) -> None:
        path = self.folder / f"step_{self.num_timesteps}_pct_{pct}.zip"
        self.model.save(path)
        self.saved[pct] = path
        print(f"[train_demo] milestone {pct}% at {self.num_timesteps} steps -> {path}", flush=True)

    def _on_training_start(self) -> None:
        if 0 in self.pcts:
            self._save(0)

    def _on_step(self) -> bool:
        for pct in self.pcts:
            if pct not in self.saved and self.num_timesteps >= self.total * pct / 100:
                self._save(pct)
        return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="BreakoutNoFrameskip-v4")
    p.add_argument("--timesteps", type=int, default=400_000)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--milestones", default="0,10,25,50,75,100")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    folder = args.out / "milestones"
    folder.mkdir(parents=True, exist_ok=True)
    env = VecFrameStack(make_atari_env(args.env, n_envs=args.n_envs, seed=args.seed), n_stack=4)
    model = PPO(
        "CnnPolicy", env, n_steps=128, n_epochs=4, batch_size=256, learning_rate=linear(2.5e-4),
        clip_range=linear(0.1), vf_coef=0.5, ent_coef=0.01, seed=args.seed, device="cpu", verbose=0,
    )
    pcts = [int(x) for x in args.milestones.split(",")]
    callback = MilestoneCheckpoints(args.timesteps, pcts, folder)
    t0 = time.perf_counter()
    model.learn(args.timesteps, callback=callback, progress_bar=False)
    wall = time.perf_counter() - t0
    if 100 in pcts and 100 not in callback.saved:
        callback._save(100)

    results = []
    for pct, path in sorted(callback.saved.items()):
        eval_env = VecFrameStack(make_atari_env(args.env, n_envs=1, seed=1000 + pct), n_stack=4)
        # Atari evaluation counts whole games: the Monitor wrapper sits under EpisodicLife, so
        # evaluate_policy reports the unclipped score of a full game (all lives).
        mean, std = evaluate_policy(PPO.load(path, device="cpu"), eval_env,
                                    n_eval_episodes=args.eval_episodes, deterministic=True)
        results.append({"pct": pct, "checkpoint": path.name, "mean_return": mean, "std_return": std})
        print(f"[train_demo] {pct:3d}%  mean return {mean:6.2f} ± {std:5.2f}", flush=True)
    report = {
        "env": args.env, "algo": "PPO", "policy": "CnnPolicy", "timesteps": args.timesteps,
        "n_envs": args.n_envs, "seed": args.seed, "torch_threads": args.threads,
        "wall_seconds": round(wall, 1), "machine": platform.processor() or platform.machine(),
        "eval_episodes": args.eval_episodes, "milestones": results,
    }
    (args.out / "train_demo.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
