"""End-to-end `gpurender render` on N milestones x S seconds (copies of one bundled demo
milestone, on the demo's game), for machines without the full suite's dependencies (the
device machine): whole command timed by the suite's own ``measure`` (wall, CPU of every process,
peak RSS from /usr/bin/time when present), stage split from --stats-json. Writes
benchmarks/results/gpu-<name>.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under PYTHONSAFEPATH (gpu_check.sh BASELINE)
from bench import ROOT, demo_game, measure, plot_fps


def make_checkpoints(folder: Path, n: int) -> str:
    """``n`` copies of one bundled demo milestone (an untrained PPO on Breakout where there is none)
    in ``folder``; -> the game they play, as ``gpurender render --game`` takes it."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from gpurender.games import resolve_game

    demo = sorted((Path(__file__).resolve().parents[1] / "gpurender" / "demo").glob("*.zip"))
    src = folder / "src.zip"
    if demo:
        shutil.copy(demo[-1], src)
        game = resolve_game(demo_game()).name
    else:
        gym.register_envs(ale_py)
        env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), 4)
        PPO("CnnPolicy", env, n_steps=8, batch_size=8, device="cpu").save(src)
        game = "Breakout"
    for k in range(n):
        shutil.copy(src, folder / f"pct_{k + 1}.zip")
    src.unlink()
    return game


def imported_gpurender() -> str:
    """The folder of the gpurender package that ``python -m gpurender``, started as :func:`run`
    starts it, imports: so a comparison with another checkout shows which code ran."""
    code = "import gpurender, pathlib; print(pathlib.Path(gpurender.__file__).parent)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def run(n: int, seconds: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ck, out = Path(tmp) / "ck", Path(tmp) / "out"
        ck.mkdir()
        game = make_checkpoints(ck, n)
        stats, log = Path(tmp) / "stats.json", Path(tmp) / "render.log"
        cmd = [sys.executable, "-m", "gpurender", "render", "--model-dir", str(ck), "--game", game,
               "--output-dir", str(out), "--clip-seconds", str(seconds), "--quiet", "--force", "--stats-json",
               str(stats), *extra]
        m = measure(cmd, log)  # the suite's: wall, exact CPU of the process tree, peak RSS
        if m.returncode != 0:
            print(m.log_tail)
            raise SystemExit(f"render failed ({m.returncode})")
        frames = round(n * seconds * 30)
        summary = [line for line in log.read_text(errors="replace").splitlines() if "frames/s" in line]
        report = json.loads(stats.read_text()) if stats.exists() else {}
        split = report.get("stage_seconds", {})
        return {"milestones": n, "game": game, "seconds": seconds, "frames": frames, "wall_s": round(m.wall_s, 2),
                "fps": round(frames / m.wall_s, 1), "realtime_x": round(n * seconds / m.wall_s, 1),
                "peak_rss_mib": None if m.max_process_rss_mib is None else round(m.max_process_rss_mib),
                "cpu_seconds": round(m.cpu_s, 1),
                # the most frames/s this much CPU allows with every core busy from start to exit
                "cpu_bound_fps": round(frames / (m.cpu_s / (os.cpu_count() or 1)), 1) if m.cpu_s else None,
                "first_frame_s": report.get("first_frame_seconds"),
                "forwards_per_step": report.get("forwards_per_step"),
                "renderer": report.get("renderer"), "encoder": report.get("encoder"),
                "device": report.get("device"),
                "env": {k: v for k, v in os.environ.items() if k.startswith("GPURENDER_")},
                "gpurender": imported_gpurender(),
                "stage_seconds": {k: round(v, 2) for k, v in split.items()},
                "summary": summary[-1] if summary else ""}


def plot(path: Path, series: list[str]) -> None:
    """frames/s against milestones, one line per ``LABEL=a.json,b.json`` (their results merged)."""
    lines, seconds = [], set()
    for spec in series:
        label, _, files = spec.partition("=")
        rows = [r for f in files.split(",") for r in json.loads(Path(f).read_text())["results"]]
        lines.append((label, "o-", [(r["milestones"], r["fps"]) for r in rows]))
        seconds |= {r["seconds"] for r in rows}
    plot_fps(lines, path, f"gpurender, whole command, {'/'.join(f'{x:g}' for x in sorted(seconds))} s clips")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="plot earlier results instead: the extra arguments are LABEL=a.json,b.json series")
    p.add_argument("--milestones", default="1,4,16")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--name", default=platform.node() or "gpu")
    p.add_argument("extra", nargs="*", help="extra flags for gpurender render")
    args = p.parse_args()
    if args.plot:
        plot(args.plot, args.extra)
        return
    results = []
    for n in (int(x) for x in args.milestones.split(",")):
        r = run(n, args.seconds, args.extra)
        results.append(r)
        print(f"gpurender {n}x{round(args.seconds * 30)} frames: {r['fps']} fps "
              f"({r['realtime_x']}x real time), first frame {r['first_frame_s']} s, forwards/step "
              f"{r['forwards_per_step']}, CPU {r['cpu_seconds']} s (bound {r['cpu_bound_fps']} fps), "
              f"peak RSS {r['peak_rss_mib']} MiB, "
              f"stages {r['stage_seconds']} "
              f"| {r['summary']}", flush=True)
    out = Path(__file__).resolve().parent / "results" / f"gpu-{args.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
