"""Train the bundled demo agent: PPO CnnPolicy on RoadRunner with SB3's standard Atari set-up.

This is the script that produced the checkpoints in ``gpurender/demo/``. It uses exactly what real
users use — ``make_atari_env`` + ``VecFrameStack(4)`` and rl-zoo's PPO Atari hyper-parameters — and
:class:`gpurender.sb3.MilestoneVideoCallback`, which saves a checkpoint at each milestone
percentage of training (``milestones/step_<N>_pct_<P>.zip``) and, unless ``--no-render``, renders
its video in the background. ``--resume CHECKPOINT`` continues a run from a checkpoint it saved
(its step count, optimizer state and learning-rate progress; the milestone schedule stays the
whole run's ``--timesteps``), as often as needed. At the end (or alone, ``--evaluate-only``) each
milestone is scored with SB3's ``evaluate_policy`` over full games, with the most likely action
(deterministic) and with sampled actions (as rl-zoo plays Atari agents by default), beside
uniformly random play on the same set-up; the figures go to ``OUT/train_demo.json``.

    python benchmarks/train_demo.py --timesteps 400000 --out runs/demo
    python benchmarks/train_demo.py --timesteps 400000 --out runs/demo \
        --resume runs/demo/milestones/step_100000_pct_25.zip
    python benchmarks/train_demo.py --out runs/demo --evaluate-only
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import ale_py
import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecFrameStack

from gpurender.milestones import find_milestones
from gpurender.sb3 import MilestoneVideoCallback

gym.register_envs(ale_py)


def linear(start: float):
    """rl-zoo's ``lin_`` schedule: decays from ``start`` to 0 over training."""
    return lambda progress_remaining: progress_remaining * start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="RoadRunnerNoFrameskip-v4")
    p.add_argument("--timesteps", type=int, default=400_000)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--milestones", default="0,10,25,50,75,100")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--resume", type=Path, help="a checkpoint of this run to continue from")
    p.add_argument("--no-render", action="store_true", help="save the milestones only, render no videos")
    p.add_argument("--evaluate-only", action="store_true", help="score the milestones already in OUT, train nothing")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    folder = args.out / "milestones"
    folder.mkdir(parents=True, exist_ok=True)
    wall = None if args.evaluate_only else train(args, folder)
    results = [evaluate(args, m.pct, m.path) for m in find_milestones([folder])]  # a resumed run's earlier ones too
    random_scores = random_play(args.env, args.eval_episodes, seed=3000)
    print(f"[train_demo] random play: mean return {np.mean(random_scores):.1f}", flush=True)
    report = {
        "env": args.env, "algo": "PPO", "policy": "CnnPolicy", "timesteps": args.timesteps,
        "n_envs": args.n_envs, "seed": args.seed, "torch_threads": args.threads,
        "wall_seconds": None if wall is None else round(wall, 1), "machine": platform.processor() or platform.machine(),
        "eval_episodes": args.eval_episodes, "milestones": results,
        "random_play": {"returns": random_scores, "mean_return": float(np.mean(random_scores))},
    }
    (args.out / "train_demo.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def train(args: argparse.Namespace, folder: Path) -> float:
    """Train (or resume) with the milestone callback; -> wall seconds of ``learn``."""
    env = VecFrameStack(make_atari_env(args.env, n_envs=args.n_envs, seed=args.seed), n_stack=4)
    pcts = [float(x) for x in args.milestones.split(",")]
    callback = MilestoneVideoCallback(args.timesteps, pcts, save_dir=folder, video_dir=args.out / "videos",
                                      render=not args.no_render, render_options={"clip_seconds": 30})
    if args.resume:
        model = PPO.load(args.resume, env=env, device="cpu")
        remaining = args.timesteps - model.num_timesteps
        print(f"[train_demo] resuming {args.resume} at {model.num_timesteps:,} steps: {remaining:,} to go", flush=True)
    else:
        model = PPO(
            "CnnPolicy", env, n_steps=128, n_epochs=4, batch_size=256, learning_rate=linear(2.5e-4),
            clip_range=linear(0.1), vf_coef=0.5, ent_coef=0.01, seed=args.seed, device="cpu", verbose=0,
        )
        remaining = args.timesteps
    t0 = time.perf_counter()
    model.learn(remaining, callback=callback, progress_bar=False, reset_num_timesteps=not args.resume)
    return time.perf_counter() - t0


def evaluate(args: argparse.Namespace, pct: float, path: Path) -> dict:
    """``evaluate_policy`` of one milestone over ``--eval-episodes`` full games, deterministic and
    sampled. Atari evaluation counts whole games: the Monitor wrapper sits under EpisodicLife, so
    it reports the unclipped score of a full game (all lives)."""
    model = PPO.load(path, device="cpu")
    row: dict = {"pct": pct, "checkpoint": path.name}
    for mode, deterministic in (("deterministic", True), ("sampled", False)):
        env = VecFrameStack(make_atari_env(args.env, n_envs=1, seed=1000 + round(pct)), n_stack=4)
        returns, _ = evaluate_policy(model, env, n_eval_episodes=args.eval_episodes, deterministic=deterministic,
                                     return_episode_rewards=True)
        env.close()
        row[mode] = {"returns": [float(r) for r in returns], "mean_return": float(np.mean(returns)),
                     "std_return": float(np.std(returns))}
    print(f"[train_demo] {pct:5.1f}%  mean return {row['deterministic']['mean_return']:8.1f} deterministic, "
          f"{row['sampled']['mean_return']:8.1f} sampled", flush=True)
    return row


def random_play(env_id: str, games: int, seed: int) -> list[float]:
    """Full-game scores of uniformly random actions on the same set-up."""
    env = make_atari_env(env_id, n_envs=1, seed=seed)
    env.action_space.seed(seed)
    scores: list[float] = []
    env.reset()
    while len(scores) < games:
        _, _, dones, infos = env.step(np.array([env.action_space.sample()]))
        if dones[0] and "episode" in infos[0]:
            scores.append(float(infos[0]["episode"]["r"]))
    env.close()
    return scores


if __name__ == "__main__":
    main()
