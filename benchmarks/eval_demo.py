"""Do gpurender's videos show the agent's real play? Mean full-game score of each milestone on
gpurender's default backend (EnvPool + Sb3Atari, the exact loop videos use: batched
``Agent.act``, deterministic) against SB3's own ``evaluate_policy`` on ``make_atari_env`` +
``VecFrameStack(4)``, with 95 % confidence intervals, and as many games of uniformly random play
(the bar a milestone is measured against). Writes ``benchmarks/results/demo_eval.{md,json}``.

    python benchmarks/eval_demo.py [--games 16] [CHECKPOINT.zip ...]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from train_demo import random_play

from gpurender.agents import Agent
from gpurender.demo import GAME as DEMO_GAME
from gpurender.envs import make_atari
from gpurender.games import resolve_game

RESULTS = Path(__file__).resolve().parent / "results"


def mean_ci(scores: list[float]) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95 % confidence interval."""
    x = np.asarray(scores, float)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("inf")
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def gpurender_scores(agent: Agent, game: str, n_games: int, seed: int, max_steps: int) -> list[float]:
    """One full game per env, all envs in one batch, until each has finished a game."""
    env = make_atari(resolve_game(game), [seed + i for i in range(n_games)], "envpool")
    step = env.reset()
    score = np.zeros(n_games)
    done: dict[int, float] = {}
    for _ in range(max_steps):
        actions = agent.act(step.obs).actions.cpu().numpy()
        step = env.step(actions)
        score += step.rewards
        for i in np.flatnonzero(step.game_over):
            done.setdefault(int(i), float(score[i]))
        score[step.game_over] = 0
        if len(done) == n_games:
            break
    env.close()
    return [done[i] for i in sorted(done)]


def sb3_scores(path: Path, game: str, n_games: int, seed: int) -> list[float]:
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = VecFrameStack(make_atari_env(resolve_game(game).gym_id, n_envs=1, seed=seed), 4)
    rewards, _ = evaluate_policy(PPO.load(path, device="cpu"), env, n_eval_episodes=n_games,
                                 deterministic=True, return_episode_rewards=True)
    env.close()
    return [float(r) for r in rewards]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", type=Path)
    p.add_argument("--game", default=DEMO_GAME)
    p.add_argument("--games", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=27_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    paths = args.checkpoints or sorted((Path(__file__).resolve().parents[1] / "gpurender" / "demo").glob("*.zip"))
    rows = []
    for path in paths:
        t0 = time.perf_counter()
        ours = gpurender_scores(Agent(path, device="cpu"), args.game, args.games, 1000, args.max_steps)
        theirs = sb3_scores(path, args.game, args.games, 2000)
        (m1, lo1, hi1), (m2, lo2, hi2) = mean_ci(ours), mean_ci(theirs)
        overlap = lo1 <= hi2 and lo2 <= hi1
        rows.append({"checkpoint": path.name, "gpurender": ours, "sb3_evaluate_policy": theirs,
                     "gpurender_mean_ci": [m1, lo1, hi1], "sb3_mean_ci": [m2, lo2, hi2], "overlap": overlap})
        print(f"{path.name}: gpurender {m1:.1f} [{lo1:.1f}, {hi1:.1f}] (n={len(ours)})  "
              f"SB3 evaluate_policy {m2:.1f} [{lo2:.1f}, {hi2:.1f}] (n={len(theirs)})  "
              f"{'overlap' if overlap else 'NO OVERLAP'}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    rand = random_play(resolve_game(args.game).gym_id, args.games, seed=3000)
    rand_ci = mean_ci(rand)
    print(f"random play: {rand_ci[0]:.1f} [{rand_ci[1]:.1f}, {rand_ci[2]:.1f}] (n={len(rand)})", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_eval.json").write_text(json.dumps({"game": args.game, "games": args.games,
                                                         "machine": platform.node(), "rows": rows,
                                                         "random": rand, "random_mean_ci": rand_ci}, indent=2))
    lines = [f"# Demo milestones: gpurender's play vs SB3 `evaluate_policy` ({args.game}, deterministic)", "",
             f"{args.games} full games per side and milestone; mean and 95 % CI (normal approximation).", "",
             "| checkpoint | gpurender (EnvPool + Sb3Atari) | SB3 evaluate_policy (ale-py) | CIs overlap |",
             "|---|---|---|---|"]
    for r in rows:
        (m1, lo1, hi1), (m2, lo2, hi2) = r["gpurender_mean_ci"], r["sb3_mean_ci"]
        lines.append(f"| {r['checkpoint']} | {m1:.1f} [{lo1:.1f}, {hi1:.1f}] | {m2:.1f} [{lo2:.1f}, {hi2:.1f}] "
                     f"| {'yes' if r['overlap'] else 'NO'} |")
    lines += ["", f"Uniformly random actions on SB3's set-up ({args.games} full games): {rand_ci[0]:.1f} "
              f"[{rand_ci[1]:.1f}, {rand_ci[2]:.1f}]."]
    (RESULTS / "demo_eval.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
