"""Stage benchmark: Atari env steps/s per backend and Agent.act observations/s, per batch size.

Each case is set up, warmed up, then timed over 5 repetitions; the median is reported. The agent is
an untrained PPO CnnPolicy on Breakout's spaces saved to a temporary folder (same network and
cost as a trained one), so this runs on a fresh clone with no downloads.

    python benchmarks/bench_stages.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_stages.py --quick    # smaller batches of work, fewer seconds
    python benchmarks/bench_stages.py --threads 1  # one torch thread (shared or busy cores)

Writes ``benchmarks/results/stages-<machine>.json`` and ``.md`` naming the CPU, core count and
torch device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

try:
    import gpurender  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpurender.agents import Agent, pick_device
from gpurender.envs import make_atari
from gpurender.games import resolve_game

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 8, 32, 128)
GYM_MAX_BATCH = 8
REPS = 5


@dataclass
class Row:
    """One benchmark case: a stage at one batch size."""

    stage: str
    """env | agent"""
    backend: str
    """envpool | gym for env stages; the torch device for the agent stage."""
    batch: int
    items_per_rep: int
    """Env steps (batch x calls) or observations processed per timed repetition."""
    per_s: float
    """Median env steps/s or observations/s."""
    ms_per_call: float
    """Median milliseconds per batched call (one ``step`` or one ``act``)."""
    reps_s: list[float]
    """Seconds of each timed repetition."""


def timed(call: Callable[[], None], calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        out.append(time.perf_counter() - t0)
    return out


def row(stage: str, backend: str, batch: int, calls: int, reps: list[float]) -> Row:
    med = statistics.median(reps)
    items = batch * calls
    return Row(stage, backend, batch, items, items / med, 1000 * med / calls, [round(r, 4) for r in reps])


def bench_env(backend: str, batch: int, target: int, game: str = "Breakout") -> Row:
    env = make_atari(resolve_game(game), list(range(batch)), backend)
    env.reset()
    rng = np.random.default_rng(0)
    actions = rng.integers(0, len(env.action_names), (64, batch))
    i = 0

    def step() -> None:
        nonlocal i
        env.step(actions[i % 64])
        i += 1

    calls = max(5, target // batch)
    reps = timed(step, calls, warmup=max(3, calls // 5))
    env.close()
    return row("env", backend, batch, calls, reps)


def bench_agent(agent: Agent, batch: int, target: int) -> Row:
    obs = np.random.default_rng(0).integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8)

    def act() -> None:
        agent.act(obs).actions.cpu()  # the pipeline needs the actions on the host: a sync point

    calls = max(3, target // batch)
    reps = timed(act, calls, warmup=2)
    return row("agent", str(agent.device), batch, calls, reps)


def make_checkpoint(folder: Path) -> Path:
    """Untrained PPO CnnPolicy on Breakout's observation and action spaces."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    venv = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), 4)
    path = folder / "ppo_untrained.zip"
    PPO("CnnPolicy", venv, n_steps=8, batch_size=8, seed=0, device="cpu").save(path)
    venv.close()
    return path


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            cpu = m.group(1).strip()
    except OSError:
        pass
    info = {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import envpool

        info["envpool"] = envpool.__version__
    except (ImportError, AttributeError):
        pass
    return info


def markdown(rows: list[Row], info: dict, quick: bool) -> str:
    head = (
        f"# Stage benchmark — {info['name']}\n\n"
        f"- CPU: {info['cpu']} ({info['cores']} cores), torch {info['torch']} "
        f"(threads: {info['torch_threads']}), device `{info['device']}`"
        + (f" ({info['gpu']})" if info.get("gpu") else "") + "\n"
        f"- load average at start: {info['load_avg_at_start']} · {info['date']} · "
        f"{'--quick' if quick else 'full'} run, median of {REPS} repetitions\n\n"
    )
    lines = ["| stage | backend / device | batch | per second | ms per call |", "|---|---|---:|---:|---:|"]
    unit = {"env": "env steps", "agent": "obs"}
    for r in rows:
        lines.append(f"| {r.stage} | {r.backend} | {r.batch} | {r.per_s:,.0f} {unit[r.stage]} | {r.ms_per_call:.2f} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="less work per repetition (noisier numbers)")
    p.add_argument("--device", default="auto", help="torch device for the agent stage (auto: cuda if present)")
    p.add_argument("--name", default=None, help="machine name for the results files (default: host name)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often fastest on shared, busy cores)")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    env_target, agent_target = (200, 64) if args.quick else (1000, 384)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    info["name"] = re.sub(r"[^A-Za-z0-9_.-]", "_", args.name or info["host"])
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    rows: list[Row] = []

    def report(r: Row) -> None:
        rows.append(r)
        print(f"{r.stage:5s} {r.backend:8s} batch {r.batch:4d}: {r.per_s:10,.0f}/s  {r.ms_per_call:8.2f} ms/call",
              flush=True)

    for b in args.batches:
        report(bench_env("envpool", b, env_target))
    for b in (b for b in args.batches if b <= GYM_MAX_BATCH):
        report(bench_env("gym", b, env_target))
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(make_checkpoint(Path(tmp)), device=device)
        for b in args.batches:
            report(bench_agent(agent, b, agent_target))

    md = markdown(rows, info, args.quick)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"stages-{info['name']}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "quick": args.quick, "reps": REPS, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
