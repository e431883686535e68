"""What rendering milestones while training costs training: one short PPO run on Breakout (SB3's
make_atari_env + VecFrameStack(4), rl-zoo's Atari PPO settings, same seed every time) trained
without a callback, with :class:`gpurender.sb3.MilestoneVideoCallback` saving milestones only
(``render=False``), and with it saving and rendering them in the background; cases alternate
within each repeat, after one untimed warm-up run.

    python benchmarks/bench_callback.py --name vm --timesteps 100000 --clip-seconds 30 --repeat 3
    python benchmarks/bench_callback.py --quick          # a check that it runs: tiny, minutes

Per case (medians over the repeats): training wall (``learn`` with ``wait=False``: training
alone, renders still running after it are not in it), the overhead against the plain run, the
time training was held up by saves, and for the rendering case how long after ``learn`` the last
video was done. Environment creation is outside the timing. Results go to
``benchmarks/results/callback-<name>.{md,json}`` (``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
try:
    import gpurender  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

CASES = ("plain", "saves", "callback")
"""No callback; MilestoneVideoCallback(render=False); MilestoneVideoCallback rendering."""


@dataclass
class Run:
    case: str
    repeat: int
    train_s: float
    """Wall time of ``learn``."""
    steps: int
    save_s: float = 0.0
    """Training held up by the saves, summed."""
    saves: int = 0
    renders_done_after_s: float | None = None
    """After ``learn`` returned, until the last background render ended."""
    render_s: list[float] = field(default_factory=list)
    """Each background render's wall time."""
    render_failures: list[str] = field(default_factory=list)
    device: str = ""
    """The training's torch device."""

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.train_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=socket.gethostname(), help="machine name for the results files")
    p.add_argument("--timesteps", type=int, default=100_000, help="training steps per run (default 100000)")
    p.add_argument("--n-envs", type=int, default=8, help="training envs (default 8, rl-zoo's)")
    p.add_argument("--n-steps", type=int, default=128, help="PPO rollout steps per env (default 128, rl-zoo's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-epochs", type=int, default=4)
    p.add_argument("--device", default="auto", help="training device (default auto: CUDA if present)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for training (default: torch's)")
    p.add_argument("--milestones", default="0,25,50,75,100", help="milestone percentages (default 0,25,50,75,100)")
    p.add_argument("--clip-seconds", type=float, default=30.0, help="length of each milestone video (default 30)")
    p.add_argument("--render-device", default="cpu", help="the renders' inference device (default cpu)")
    p.add_argument("--workers", type=int, default=1, help="renders at once (default 1)")
    p.add_argument("--nice", type=int, default=10, help="the renders' nice value (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each case; the median is kept (default 3)")
    p.add_argument("--cases", default=",".join(CASES), help=f"which of {', '.join(CASES)} (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="tiny settings to check the script runs: 1024 steps, 1 s clips, repeat 1, temporary results")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="where callback-<name>.{md,json} go (default benchmarks/results; --quick: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.timesteps, args.n_envs, args.n_steps, args.batch_size, args.n_epochs = 1024, 4, 32, 128, 1
        args.clip_seconds, args.repeat, args.milestones = 1.0, 1, "0,50,100"
        args.name = f"quick-{args.name}"
    if args.results_dir is None:
        args.results_dir = (Path(tempfile.mkdtemp(prefix="gpurender-bench-callback-")) if args.quick
                            else HERE / "results")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(args.cases) - set(CASES):
        p.error(f"--cases: unknown {', '.join(sorted(unknown))} (known: {', '.join(CASES)})")
    return args


def make_env(args: argparse.Namespace):
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=args.n_envs, seed=args.seed), n_stack=4)


def train(case: str, repeat: int, args: argparse.Namespace, work: Path) -> Run:
    """One training run of ``case``, its envs and model made fresh with the same seed."""
    from stable_baselines3 import PPO

    from gpurender.sb3 import MilestoneVideoCallback

    env = make_env(args)
    try:
        model = PPO("CnnPolicy", env, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs,
                    learning_rate=2.5e-4, clip_range=0.1, vf_coef=0.5, ent_coef=0.01, seed=args.seed,
                    device=args.device)
        cb = None
        if case != "plain":
            folder = work / f"{case}-{repeat}"
            cb = MilestoneVideoCallback(milestones=args.milestones, save_dir=folder / "milestones",
                                        render_options={"clip_seconds": args.clip_seconds,
                                                        "device": args.render_device},
                                        workers=args.workers, nice=args.nice, wait=False, render=case == "callback")
        t0 = time.perf_counter()
        model.learn(args.timesteps, callback=cb)
        train_s = time.perf_counter() - t0
        run = Run(case, repeat, train_s, model.num_timesteps, device=str(model.device))
        if cb is not None:
            cb.wait()  # renders still running must not slow the next run down
            if case == "callback":
                run.renders_done_after_s = time.perf_counter() - t0 - train_s
            run.save_s = sum(s.seconds for s in cb.saved)
            run.saves = len(cb.saved)
            run.render_s = [r.seconds for r in cb.results if r.milestone is not None]
            run.render_failures = [r.error or "" for r in cb.failures]
            cb.close()
            shutil.rmtree(work / f"{case}-{repeat}", ignore_errors=True)
        return run
    finally:
        env.close()


def median(runs: list[Run], case: str, attr: str) -> float | None:
    values = [getattr(r, attr) for r in runs if r.case == case and getattr(r, attr) is not None]
    return statistics.median(values) if values else None


def summary(runs: list[Run], cases: list[str]) -> dict:
    plain = median(runs, "plain", "train_s")
    out = {}
    for case in cases:
        train_s = median(runs, case, "train_s")
        out[case] = {
            "train_s": train_s,
            "steps_per_s": median(runs, case, "steps_per_s"),
            "overhead_pct": None if plain is None or case == "plain" else 100.0 * (train_s / plain - 1.0),
            "save_s": median(runs, case, "save_s"),
            "renders_done_after_s": median(runs, case, "renders_done_after_s"),
            "runs": [r.train_s for r in runs if r.case == case],
        }
    return out


def markdown(result: dict) -> str:
    a, m = result["settings"], result["machine"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    device = result["runs"][0]["device"] if result["runs"] else "?"
    lines = [
        f"# Training overhead of MilestoneVideoCallback — {result['name']}",
        "",
        f"{result['date']}. {m['cpu']}, {m['cores']} cores{gpu}; torch {m['torch']} ({m['torch_threads']} "
        f"threads), training on {device}; load average at start / end {m['load_avg_at_start']} / "
        f"{m['load_avg_at_end']}.",
        "",
        f"PPO CnnPolicy, BreakoutNoFrameskip-v4, {a['n_envs']} envs x {a['n_steps']} steps, batch {a['batch_size']}, "
        f"{a['n_epochs']} epochs, {a['timesteps']:,} steps, seed {a['seed']}. Milestones {a['milestones']} "
        f"%, {a['clip_seconds']:g} s clips, renders on {a['render_device']}, {a['workers']} at a time, nice "
        f"{a['nice']}. Medians of {a['repeat']} runs per case, cases alternating; `learn` with `wait=False`, so "
        "training wall excludes renders still running after it.",
        "",
        "| case | training wall (s) | steps/s | overhead | held up by saves (s) | last video after learn (s) "
        "| runs (s) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for case, s in result["summary"].items():
        overhead = "-" if s["overhead_pct"] is None else f"{s['overhead_pct']:+.1f} %"
        saves = "-" if case == "plain" else f"{s['save_s']:.2f}"
        after = "-" if s["renders_done_after_s"] is None else f"{s['renders_done_after_s']:.1f}"
        each = ", ".join(f"{x:.1f}" for x in s["runs"])
        lines.append(f"| {case} | {s['train_s']:.1f} | {s['steps_per_s']:.0f} | {overhead} | {saves} | {after} | "
                     f"{each} |")
    failures = [f for r in result["runs"] for f in r["render_failures"]]
    if failures:
        lines += ["", f"Render failures ({len(failures)}): " + "; ".join(sorted(set(failures)))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from bench import write_results
    from bench_stages import machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    info.pop("device")
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    work = Path(tempfile.mkdtemp(prefix="gpurender-bench-callback-work-"))
    runs: list[Run] = []
    try:
        print(f"warm-up: {args.cases[0]}", flush=True)
        train(args.cases[0], -1, args, work)
        for rep in range(args.repeat):
            order = args.cases if rep % 2 == 0 else args.cases[::-1]
            for case in order:
                run = train(case, rep, args, work)
                runs.append(run)
                tail = "" if run.renders_done_after_s is None else (
                    f", saves {run.save_s:.2f} s, last video {run.renders_done_after_s:.1f} s after learn")
                print(f"{case} #{rep}: {run.steps} steps in {run.train_s:.1f} s: {run.steps_per_s:.0f} steps/s"
                      f"{tail}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"name": args.name, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": info,
              "settings": settings, "summary": summary(runs, args.cases), "runs": [asdict(r) for r in runs]}
    stem = args.results_dir / f"callback-{args.name}"
    write_results(stem, result, markdown(result))
    s = result["summary"]
    if "callback" in s and s["callback"]["overhead_pct"] is not None:
        print(f"callback: training {s['callback']['train_s']:.1f} s vs {s['plain']['train_s']:.1f} s plain: "
              f"{s['callback']['overhead_pct']:+.1f} % (saves held it up {s['callback']['save_s']:.2f} s)")
    print(f"results: {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
