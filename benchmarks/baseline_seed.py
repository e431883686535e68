"""Baseline: a faithful re-implementation of the original OpenCV post-training video tool.

The seed project (``training/post_training_video_generator.py``) rendered each milestone clip
on the CPU, one frame at a time: render the Atari frame, make batch-1 forward passes through the
policy for the action probabilities and the value, draw a 480x540 analytics panel and a
5-layer network diagram with ``cv2.putText`` / ``cv2.circle`` / ``cv2.line``, ``np.hstack`` it
with the resized game frame, convert RGB->BGR, keep every frame in a Python list and write the
whole clip with ``cv2.VideoWriter('mp4v')`` at the end. This script does the same work the same
way, so gpurender can be timed against it. The only addition is ``--procs N``, which spreads
the milestones over N spawned worker processes (one torch thread each) to give the baseline a
fair chance to use every core. With one process (``--procs 1``, or a single checkpoint) the
work runs in this process with torch's default thread count, as the original did; set
``OMP_NUM_THREADS=1`` when other jobs share the cores, or batch-1 convolutions oversubscribe.

    python benchmarks/baseline_seed.py --checkpoints a.zip b.zip --output-dir out \
        --frames 900 --fps 30 --env BreakoutNoFrameskip-v4 --seed 0 --procs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ale_py
import cv2
import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

gym.register_envs(ale_py)

FONT = cv2.FONT_HERSHEY_SIMPLEX
# The original called putText/circle/line without a lineType, i.e. OpenCV's default LINE_8.
LINE = cv2.LINE_8
# The original's colours, written as BGR but drawn on the RGB panel that is converted RGB->BGR at
# the end, so its "yellow" highlight (and every other non-grey colour) comes out channel-swapped.
WHITE, YELLOW, GREEN = (255, 255, 255), (0, 255, 255), (0, 255, 0)
# The original's layer table (its shapes used a Unicode "x" sign, which putText draws as "??").
LAYERS: list[tuple[str, str, int, tuple[int, int, int]]] = [
    ("Input", "84x84x4", 8, (0, 255, 0)),
    ("Conv1", "32@20x20", 6, (255, 100, 0)),
    ("Conv2", "64@9x9", 6, (255, 100, 0)),
    ("Dense", "512", 8, (100, 100, 255)),
    ("Output", "4", 4, (0, 165, 255)),
]


def load_model(path: str, algo: str | None = None) -> BaseAlgorithm:
    """Load with ``PPO.load`` / ``DQN.load``; ``algo`` defaults to that of the saved policy."""
    if algo is None:
        with zipfile.ZipFile(path) as zf:
            policy = json.loads(zf.read("data")).get("policy_class", {})
        algo = "dqn" if ".dqn." in policy.get("__module__", "") else "ppo"
    return {"ppo": PPO, "dqn": DQN}[algo.lower()].load(path)


def _process_age_s() -> float:
    """Seconds since this process started (Linux): wall time including interpreter start-up."""
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


def _extract_ml_analytics(model: BaseAlgorithm, obs: np.ndarray, frame_idx: int, total: int,
                          episode_reward: float) -> dict[str, Any]:
    """Batch-1 forward passes for the action probabilities and the value estimate."""
    analytics: dict[str, Any] = {"step": frame_idx, "progress_pct": frame_idx / total * 100,
                                 "action_probs": None, "value_estimate": 0.0,
                                 "episode_reward": episode_reward}
    obs_tensor = model.policy.obs_to_tensor(obs)[0]
    with torch.no_grad():
        if isinstance(model, DQN):
            q_values = model.q_net(obs_tensor)[0]
            analytics["action_probs"] = torch.softmax(q_values, 0).cpu().numpy()
            analytics["value_estimate"] = float(q_values.max().cpu().item())
        else:
            dist = model.policy.get_distribution(obs_tensor)
            analytics["action_probs"] = dist.distribution.probs[0].cpu().numpy()
            values = model.policy.predict_values(obs_tensor)
            analytics["value_estimate"] = float(values[0].cpu().numpy().item())
    return analytics


def _draw_analytics_panel(panel: np.ndarray, a: dict[str, Any], title: str, lr: float,
                          action_names: list[str]) -> None:
    """Title, subtitle, frame/progress/reward lines, policy distribution and value estimate."""
    progress = a["progress_pct"]
    cv2.putText(panel, title, (10, 30), FONT, 0.5, WHITE, 1, LINE)
    cv2.putText(panel, f"Post-Training Evaluation | Progress: {progress:.1f}% | lr={lr:.1e}",
                (10, 50), FONT, 0.35, (180, 180, 180), 1, LINE)
    y, line_h = 80.0, 20
    for text in (f"Frame:      {a['step']:,}", f"Progress:   {progress:.2f}%",
                 f"Ep Reward:  {a['episode_reward']:.1f}"):
        cv2.putText(panel, text, (10, int(y)), FONT, 0.4, WHITE, 1, LINE)
        y += line_h
    y += line_h * 0.5
    probs = a["action_probs"]
    cv2.putText(panel, "Policy Distribution:", (10, int(y)), FONT, 0.4, (200, 200, 200), 1, LINE)
    y += line_h * 0.8
    for name, prob in zip(action_names, probs, strict=False):
        color = YELLOW if prob == max(probs) else (150, 150, 150)
        cv2.putText(panel, f"  {name:5s}: {prob:.3f}", (10, int(y)), FONT, 0.35, color, 1, LINE)
        y += line_h * 0.8
    y += line_h * 0.5
    cv2.putText(panel, f"Value Est:  {a['value_estimate']:.3f}", (10, int(y)), FONT, 0.4, GREEN,
                1, LINE)


def _draw_neural_network(panel: np.ndarray, a: dict[str, Any], action_names: list[str]) -> None:
    """Five-layer diagram: animated connections, activation-lit nodes, pulse on the argmax."""
    net_x, net_y, net_w, net_h = 20, 280, 440, 240
    spacing = net_w // (len(LAYERS) - 1)
    layers = [[(net_x + i * spacing, net_y + (j + 1) * (net_h // (n + 1))) for j in range(n)]
              for i, (_, _, n, _) in enumerate(LAYERS)]
    step, probs = a["step"], a["action_probs"]
    # Connections: every node pair of adjacent layers is evaluated, the "strong" ones drawn.
    for i in range(len(layers) - 1):
        for j, start in enumerate(layers[i]):
            for k, end in enumerate(layers[i + 1]):
                strength = 0.3 + 0.4 * np.sin(step * 0.01 + j * 0.5 + k * 0.3)
                if strength > 0.6:
                    alpha = int(strength * 255)
                    cv2.line(panel, start, end, (alpha // 3, alpha // 3, alpha), 1, LINE)
    last = len(LAYERS) - 1
    for li, ((_, _, _, base), nodes) in enumerate(zip(LAYERS, layers, strict=False)):
        for ni, pos in enumerate(nodes):
            if li == last:
                activation = probs[ni] if ni < len(probs) else 0.25
            else:
                activation = 0.3 + 0.4 * np.sin(step * 0.02 + li * 0.8 + ni * 0.4)
            brightness = int(activation * 255)
            color = tuple(int(c * brightness / 255) for c in base)
            radius = 8 if li == last else 6
            cv2.circle(panel, pos, radius, color, -1, LINE)
            cv2.circle(panel, pos, radius, WHITE, 1, LINE)
            if li == last and ni < len(probs) and probs[ni] == max(probs):
                pulse = int(128 + 127 * np.sin(step * 0.1))
                cv2.circle(panel, pos, radius + 2, (pulse, pulse, pulse), 2, LINE)
    for (name, shape, _, _), nodes in zip(LAYERS, layers, strict=False):
        x, y = nodes[0][0] - 20, net_y + net_h + 20
        cv2.putText(panel, name, (x, y), FONT, 0.35, (200, 200, 200), 1, LINE)
        cv2.putText(panel, shape, (x, y + 15), FONT, 0.3, (150, 150, 150), 1, LINE)
    for pos, name in zip(layers[-1], action_names, strict=False):
        cv2.putText(panel, name, (pos[0] + 15, pos[1] + 5), FONT, 0.3, (180, 180, 180), 1, LINE)


def _create_enhanced_frame(game_frame: np.ndarray, a: dict[str, Any], title: str, lr: float,
                           action_names: list[str]) -> np.ndarray:
    """960x540 BGR frame: analytics panel (left) next to the resized game frame (right)."""
    game_resized = cv2.resize(game_frame, (480, 540))
    panel = np.zeros((540, 480, 3), dtype=np.uint8)
    _draw_analytics_panel(panel, a, title, lr, action_names)
    _draw_neural_network(panel, a, action_names)
    return cv2.cvtColor(np.hstack([panel, game_resized]), cv2.COLOR_RGB2BGR)


def open_env(env_id: str, seed: int) -> VecFrameStack:
    """The original's env: one Atari game, SB3's wrappers, 4 frames stacked, screens rendered."""
    return VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed, env_kwargs={"render_mode": "rgb_array"}),
                         n_stack=4)


def play(model: BaseAlgorithm, vec_env: VecFrameStack, env_id: str, frames: int,
         overlay: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> list[np.ndarray]:
    """The original's frame loop: ``frames`` BGR frames of ``model`` playing in ``vec_env``, kept in
    a list. ``overlay(screen, obs)``, if given, draws on each game screen before the panel is put
    beside it (the saliency baseline's heat map)."""
    action_names = vec_env.envs[0].unwrapped.get_action_meanings()
    game = env_id.split("/")[-1].split("-")[0].replace("NoFrameskip", "").upper()
    title = f"{game} - {type(model).__name__} Neural Activity Viewer"
    lr = model.learning_rate if isinstance(model.learning_rate, float) else 2.5e-4
    video: list[np.ndarray] = []  # the whole clip stays in RAM, as in the original
    obs, episode_reward = vec_env.reset(), 0.0
    for frame_idx in range(frames):
        game_frame = vec_env.envs[0].render()
        if overlay is not None:
            game_frame = overlay(game_frame, obs)
        analytics = _extract_ml_analytics(model, obs, frame_idx, frames, episode_reward)
        video.append(_create_enhanced_frame(game_frame, analytics, title, lr, action_names))
        action, _ = model.predict(obs, deterministic=True)
        obs, rewards, dones, _ = vec_env.step(action)
        episode_reward += float(rewards[0])
        if dones[0]:
            episode_reward = 0.0
    return video


def write_video(video: list[np.ndarray], path: Path, fps: int) -> None:
    """The original's writer: every frame at the end, ``cv2.VideoWriter('mp4v')``."""
    height, width = video[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in video:
        writer.write(frame)
    writer.release()


def render_milestone(checkpoint: str, output_dir: str, frames: int, fps: int, env_id: str,
                     seed: int, algo: str | None = None) -> dict[str, Any]:
    """Play one checkpoint for ``frames`` frames and write ``<stem>_baseline.mp4``."""
    model = load_model(checkpoint, algo)
    vec_env = open_env(env_id, seed)
    video = play(model, vec_env, env_id, frames)
    vec_env.close()
    out_path = Path(output_dir) / f"{Path(checkpoint).stem}_baseline.mp4"
    write_video(video, out_path, fps)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"checkpoint": checkpoint, "video": str(out_path), "frames": len(video),
            "pid": os.getpid(), "rss_mib": rss_mib}


def _worker_init() -> None:
    """Each spawned worker gets one torch thread so N workers share N cores fairly."""
    torch.set_num_threads(1)


def _render_star(args: tuple[Any, ...]) -> dict[str, Any]:
    return render_milestone(*args)


def run_baseline(checkpoints: list[str], output_dir: str, frames: int = 900, fps: int = 30,
                 env_id: str = "BreakoutNoFrameskip-v4", seed: int = 0,
                 procs: int | None = None, algo: str | None = None) -> dict[str, Any]:
    """Render every checkpoint; ``procs`` > 1 spreads them over spawned worker processes."""
    t0 = time.perf_counter()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    procs = max(1, min(procs or os.cpu_count() or 1, len(checkpoints)))
    jobs = [(c, output_dir, frames, fps, env_id, seed, algo) for c in checkpoints]
    if procs == 1:  # the original: milestones one after another in this process
        results = [_render_star(job) for job in jobs]
    else:
        with mp.get_context("spawn").Pool(procs, initializer=_worker_init) as pool:
            results = pool.map(_render_star, jobs, chunksize=1)
    wall = time.perf_counter() - t0
    total = sum(r["frames"] for r in results)
    self_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    per_pid: dict[int, float] = {}
    for r in results:  # concurrent workers: the sum of their peaks bounds the total footprint
        per_pid[r["pid"]] = max(per_pid.get(r["pid"], 0.0), r["rss_mib"])
    return {"frames": total, "wall_s": wall, "fps": total / wall, "procs": procs,
            "peak_rss_self_mib": self_mib, "peak_rss_children_mib": child_mib,
            "peak_rss_mib": self_mib + child_mib,
            "peak_rss_workers_sum_mib": sum(per_pid.values()),
            "videos": [r["video"] for r in results]}


def main() -> None:
    """CLI entry point; prints one summary line and optionally writes it as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--frames", type=int, default=900)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--env", default="BreakoutNoFrameskip-v4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--procs", type=int, default=os.cpu_count())
    p.add_argument("--algo", choices=["ppo", "dqn"], default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    result = run_baseline(args.checkpoints, args.output_dir, args.frames, args.fps, args.env,
                          args.seed, args.procs, args.algo)
    result["run_s"] = result["wall_s"]
    result["wall_s"] = _process_age_s()  # whole run incl. interpreter start-up and imports
    result["fps"] = result["frames"] / result["wall_s"]
    print(f"[baseline_seed] frames={result['frames']} wall_s={result['wall_s']:.2f} "
          f"fps={result['fps']:.1f} procs={result['procs']} "
          f"peak_rss_mib={result['peak_rss_mib']:.0f} (self {result['peak_rss_self_mib']:.0f}"
          f" + largest child {result['peak_rss_children_mib']:.0f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
