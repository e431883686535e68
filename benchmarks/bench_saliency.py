"""Saliency side by side: the paper's approach (``baseline_saliency.py``: one frame at a time, one
batch-1 forward per mask, actor and critic separately) against gpurender's batched
:class:`~gpurender.saliency.SaliencyComputer`, in one process, on the same observations, in
alternating rounds; the median round of each case is reported.

* Observations: real frame stacks of the demo's game (``gpurender.demo.GAME``; SB3's
  ``make_atari_env`` + ``VecFrameStack``), played by the bundled 100 % demo milestone; milestone
  ``m`` of a step gets observation ``t + m``.
* Baseline: the 100 % milestone through ``PPO.load``; a frame is its actor and critic maps. Its
  cost per frame does not depend on how many milestones there are (it does them one by one).
* gpurender: one ``maps()`` call per step for every milestone's observation, as a render step would
  call it; frames/s counts every milestone's frames (``per milestone`` divides by the count).
* CPU ms/frame: this process's CPU time (every thread) per frame.

With ``--render``, whole renders instead of the maps alone:

* Baseline: the original tool's frame loop (``baseline_seed.play``: env step, batch-1 forwards,
  the OpenCV panel and diagram) with the paper's actor and critic maps of every frame drawn on
  the game screen (``baseline_saliency.heat_overlay``, as the paper's ``make_movie``), written
  with ``cv2.VideoWriter('mp4v')`` (``baseline_seed.write_video``) to a real file. Timed in this
  process from the first frame to the written file: the checkpoint loads and the env is made
  before the clock starts (start-up would weigh a few-frame clip unfairly against it).
* gpurender: the whole ``gpurender render --demo --saliency METHOD`` command, start-up included,
  timed and its CPU counted as ``bench.py`` does (:func:`bench.measure`: every process and
  thread of the command's tree); frames/s counts every milestone's frames.

    python benchmarks/bench_saliency.py --name vm-2core --threads 1
    python benchmarks/bench_saliency.py --name h200 --device cuda --milestones 1,4,16
    python benchmarks/bench_saliency.py --render --name vm-2core --threads 1 --baseline-frames 4

Writes ``saliency-<name>.md`` and ``.json`` (``--render``: ``saliency-render-<name>``) to
``--results-dir`` (``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
try:
    import gpurender  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from baseline_saliency import PaperModel, heat_overlay, saliency_frame  # noqa: E402
from baseline_seed import load_model, open_env, play, write_video  # noqa: E402
from bench import FPS, measure, write_results  # noqa: E402
from bench_stages import machine_info  # noqa: E402

from gpurender.agents import Agent, pick_device  # noqa: E402
from gpurender.demo import GAME, demo_checkpoints  # noqa: E402
from gpurender.games import resolve_game  # noqa: E402
from gpurender.saliency import SaliencyComputer  # noqa: E402

DEMO_GAME = resolve_game(GAME)
"""The game the bundled demo milestones play."""


def observations(n: int, warmup: int = 40) -> np.ndarray:
    """(n, 4, 84, 84) uint8: the demo's game as SB3 trains on it, played by the 100 % demo
    milestone (after ``warmup`` steps, so the game is under way)."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    venv = VecFrameStack(make_atari_env(DEMO_GAME.gym_id, n_envs=1, seed=0), n_stack=4)
    agent = Agent(demo_checkpoints()[-1], device="cpu")
    out, o = [], venv.reset()
    for t in range(warmup + n):
        x = np.ascontiguousarray(np.transpose(o, (0, 3, 1, 2)))
        if t >= warmup:
            out.append(x[0])
        o, *_ = venv.step(agent.act(x).actions.numpy())
    venv.close()
    return np.stack(out)


def timed(fn, frames: int) -> dict:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"frames": frames, "wall_s": wall, "frames_per_s": frames / wall, "cpu_ms_per_frame": 1000 * cpu / frames}


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["frames_per_s"])
    return {**ordered[len(ordered) // 2], "all_frames_per_s": [round(r["frames_per_s"], 3) for r in runs]}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float((a @ b) / max(np.sqrt((a @ a) * (b @ b)), 1e-30))


def case_table(cases: list[dict]) -> list[str]:
    """The cases side by side, one row each; ``x baseline CPU`` and ``start-up s`` where measured."""
    extra = [(key, head) for key, head in (("x_baseline_cpu", "x baseline CPU"), ("startup_s", "start-up s"))
             if any(key in c for c in cases)]
    lines = ["| case | method | milestones | frames | wall s | frames/s | per milestone | CPU ms/frame | x baseline | "
             + "".join(f"{head} | " for _, head in extra) + "rounds (frames/s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra) + "---|"]
    for c in cases:
        fps = c["frames_per_s"]
        cells = [c["tool"], c["method"], str(c["milestones"]), str(c["frames"]), f"{c['wall_s']:.2f}", f"{fps:.2f}",
                 f"{fps / c['milestones']:.2f}", f"{c['cpu_ms_per_frame']:.1f}"]
        for key in ("x_baseline", *(k for k, _ in extra)):
            x = c.get(key)
            cells.append("-" if x is None else f"{x:.1f}" + ("x" if key.startswith("x_") else ""))
        cells.append(", ".join(f"{x:.2f}" for x in c["all_frames_per_s"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def machine_head(result: dict, title: str, rows: list[str]) -> list[str]:
    """A results file's title, date, commit and command, and its machine table (``rows``: the
    lines between the core count and the load averages)."""
    m = result["machine"]
    return [
        f"# {title} — {result['name']}",
        "",
        f"{result['date']} · commit {m.get('commit') or '?'} · `{result['command']}`",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        *rows,
        f"| load average at start / end | {m['load_avg_at_start']} / {m['load_avg_at_end']} |",
    ]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        *machine_head(result, "Saliency benchmark", [
            f"| torch | {m['torch']} on `{m['device']}`{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, "
            f"{m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''} |"]),
        f"| observations | {result['observations']} real {result['game']} stacks (SB3 wrappers), the 100 % demo "
        "milestone playing |",
        "",
        f"Median of {result['repeat']} alternating rounds. Baseline: `benchmarks/baseline_saliency.py` (the paper's "
        "structure: per frame, actor then critic, one batch-1 forward per mask, 2 x 290 forwards; always on the CPU, "
        "as the paper's code). gpurender: `SaliencyComputer(...).maps()` once per step for every milestone's "
        "observation; frames/s counts all milestones' frames.",
        "",
        *case_table(result["cases"]),
    ]
    agree = result.get("agreement")
    if agree:
        lines += ["", "Agreement on one observation (Pearson r of the 84x84 maps, gpurender perturbation vs baseline; "
                  "they differ by design in the mask near the border and the baseline's 8-bit resize): "
                  f"actor {agree['actor']:.3f}, critic {agree['critic']:.3f}."]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default=os.uname().nodename, help="names the results files")
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds (the median is reported)")
    ap.add_argument("--baseline-frames", type=int, default=3, help="frames the baseline scores per round")
    ap.add_argument("--steps", type=int, default=8, help="steps gpurender scores per round and milestone count")
    ap.add_argument("--milestones", default="1,4", help="milestone counts for gpurender (demo checkpoints, cycled)")
    ap.add_argument("--methods", default="perturbation,gradient")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch (and the baseline's OpenCV) threads for both (default: their choice)")
    ap.add_argument("--device", default="auto", help="gpurender's device (the baseline runs on the CPU)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--render", action="store_true",
                    help="whole renders: the baseline's video loop with the maps drawn against the whole "
                         "`gpurender render --demo --saliency` command")
    ap.add_argument("--clip-seconds", type=float, default=2.0, help="--render: gpurender's clip length")
    ap.add_argument("--note", default="", help="a line added to the report (e.g. what else ran on the machine)")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    return ap.parse_args(argv)


def build_cases(args: argparse.Namespace, device: torch.device, obs: np.ndarray,
                baseline: PaperModel | None) -> list[tuple[dict, Callable[[], None], int]]:
    """(what, run one round, frames per round) for the baseline and every gpurender case."""
    counts = [int(x) for x in args.milestones.split(",")]
    paths = demo_checkpoints()
    agents = [Agent(paths[i % len(paths)], device=device) for i in range(max(counts))]
    cases: list[tuple[dict, Callable[[], None], int]] = []
    if baseline is not None:
        def run_baseline() -> None:
            for t in range(args.baseline_frames):
                saliency_frame(baseline, obs[t])

        cases.append(({"tool": "baseline (paper)", "method": "perturbation", "milestones": 1}, run_baseline,
                      args.baseline_frames))
    for method in args.methods.split(","):
        for m in counts:
            computer = SaliencyComputer(agents[:m], method)
            steps = [np.ascontiguousarray(obs[t:t + m]) for t in range(args.steps)]

            def run(computer: SaliencyComputer = computer, steps: list[np.ndarray] = steps) -> None:
                for o in steps:
                    computer.maps(o, np.zeros(len(o), np.int64))
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)

            cases.append(({"tool": "gpurender", "method": method, "milestones": m}, run, args.steps * m))
    return cases


# -- whole renders (--render) ----------------------------------------------------------------------

ENV_ID = DEMO_GAME.gym_id
"""The demo milestones' game, in the original tool's spelling."""


def baseline_render(model: object, paper: PaperModel, frames: int, out: Path) -> Callable[[], dict]:
    """One baseline round: a fresh env (untimed), then ``frames`` frames played, drawn with both
    maps and written to ``out``."""

    def run() -> dict:
        vec_env = open_env(ENV_ID, seed=0)
        try:
            result = timed(lambda: write_video(play(model, vec_env, ENV_ID, frames, heat_overlay(paper)), out, FPS),
                           frames)
        finally:
            vec_env.close()
        if not out.is_file() or out.stat().st_size == 0:
            raise SystemExit(f"the baseline wrote no video at {out}")
        out.unlink()
        return result

    return run


def gpurender_render(method: str, milestones: int, seconds: float, device: str, work: Path) -> Callable[[], dict]:
    """One gpurender round: the whole command, timed and its CPU counted by :func:`bench.measure`."""
    tag = f"{method}-{milestones}"
    out, stats = work / tag, work / f"{tag}.json"
    frames = milestones * round(seconds * FPS)
    cmd = [sys.executable, "-m", "gpurender", "render", "--demo", *(["--milestones", "100"] if milestones == 1 else []),
           "--saliency", method, "--clip-seconds", f"{seconds:g}", "--fps", str(FPS), "--device", device,
           "--output-dir", str(out), "--force", "--quiet", "--stats-json", str(stats)]

    def run() -> dict:
        m = measure(cmd, work / f"{tag}.log")
        done = json.loads(stats.read_text()).get("frames") if stats.is_file() else None
        if m.returncode != 0 or done != frames:
            raise SystemExit(f"gpurender {tag} failed (exit {m.returncode}, {done} of {frames} frames):\n{m.log_tail}")
        shutil.rmtree(out, ignore_errors=True)
        job_s = json.loads(stats.read_text())["wall_seconds"]
        return {"frames": frames, "wall_s": m.wall_s, "frames_per_s": frames / m.wall_s, "startup_s": m.wall_s - job_s,
                "cpu_ms_per_frame": 1e3 * m.cpu_s / frames,
                "cpu_ms_per_frame_by_role": {k: round(1e3 * v / frames, 2) for k, v in m.cpu_by_role.items()}}

    return run


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        *machine_head(result, "Saliency render benchmark", [
            f"| threads | baseline: torch {m['torch_threads']}, OpenCV {m['opencv_threads']}; gpurender: its own "
            "(the simulation process sets torch to max(1, min(4, cores // 4)) threads, "
            f"{max(1, min(4, m['cores'] // 4))} here; llvmpipe and x264 threads as they choose) |"]),
        f"| game | {result['game']} (the bundled demo's), both tools |",
        "",
        f"Median of {result['repeat']} alternating rounds. Baseline: the original tool's frame loop "
        "(`baseline_seed.play`: one env, batch-1 forwards, OpenCV panel and diagram) with the paper's actor and "
        "critic perturbation maps of every frame (`baseline_saliency.saliency_frame`: 2 x 290 batch-1 forwards) "
        "added to the game screen as `make_movie` does (`heat_overlay`), written with OpenCV's mp4v writer; "
        f"{result['baseline_frames']} frames per round, timed from the first frame to the closed file (checkpoint "
        f"and env ready beforehand). gpurender: the whole `gpurender render --demo --saliency METHOD` command, "
        f"{result['clip_seconds']:g} s clips at {FPS} fps, start-up included; CPU of every process and thread of "
        "the command (`bench.measure`); frames/s counts all milestones' frames; start-up s: the command's wall "
        "outside its render job (interpreter, imports, exit). x baseline CPU: the baseline's CPU ms per frame / "
        "gpurender's.",
        "",
        *case_table(result["cases"]),
        "",
        "gpurender's CPU by process and thread (median round, ms per frame):",
        "",
        "| method | milestones | process · threads | ms per frame |",
        "|---|---:|---|---:|",
    ]
    for c in result["cases"]:
        for role, ms in c.get("cpu_ms_per_frame_by_role", {}).items():
            if ms >= 0.05:
                lines.append(f"| {c['method']} | {c['milestones']} | {role} | {ms:.2f} |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main_render(args: argparse.Namespace, info: dict) -> int:
    """``--render``: the baseline's saliency video against whole gpurender renders, alternating."""
    import cv2

    info["opencv_threads"] = cv2.getNumThreads()
    counts = [int(x) for x in args.milestones.split(",")]
    checkpoint = demo_checkpoints()[-1]
    with tempfile.TemporaryDirectory(prefix="bench-saliency-render-") as tmp:
        work = Path(tmp)
        cases: list[tuple[dict, Callable[[], dict]]] = []
        warm = [gpurender_render("gradient", 1, 0.5, args.device, work)]  # imports, page cache
        if not args.skip_baseline:
            model, paper = load_model(str(checkpoint)), PaperModel(checkpoint)
            cases.append(({"tool": "baseline (paper + original tool)", "method": "perturbation", "milestones": 1},
                          baseline_render(model, paper, args.baseline_frames, work / "baseline.mp4")))
            warm.append(baseline_render(model, paper, 1, work / "warm.mp4"))
        for method in args.methods.split(","):
            for n in counts:
                cases.append(({"tool": "gpurender", "method": method, "milestones": n},
                               gpurender_render(method, n, args.clip_seconds, args.device, work)))
        for run in warm:
            run()
        runs: list[list[dict]] = [[] for _ in cases]
        for r in range(args.repeat):
            for i, (meta, run) in enumerate(cases):
                runs[i].append(run())
                print(f"round {r + 1}: {meta['tool']} {meta['method']} x{meta['milestones']}: "
                      f"{runs[i][-1]['frames_per_s']:.2f} frames/s, {runs[i][-1]['cpu_ms_per_frame']:.1f} CPU ms/frame",
                      flush=True)
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results = [{**meta, **median_run(rs)} for (meta, _), rs in zip(cases, runs, strict=True)]
    base = results[0] if not args.skip_baseline else None
    for c in results:
        mine = base is not None and c["tool"] == "gpurender"
        c["x_baseline"] = c["frames_per_s"] / base["frames_per_s"] if mine else None
        c["x_baseline_cpu"] = base["cpu_ms_per_frame"] / c["cpu_ms_per_frame"] if mine else None
    result = {
        "name": args.name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/bench_saliency.py", *(sys.argv[1:])]),
        "machine": info,
        "game": DEMO_GAME.name,
        "repeat": args.repeat,
        "baseline_frames": args.baseline_frames,
        "clip_seconds": args.clip_seconds,
        "cases": results,
        "note": args.note,
    }
    stem = args.results_dir / f"saliency-render-{args.name}"
    write_results(stem, result, render_markdown(result))
    for c in results:
        ratio = ("" if c["x_baseline"] is None else
                 f"  ({c['x_baseline']:.1f}x baseline, {c['x_baseline_cpu']:.1f}x its CPU/frame)")
        print(f"{c['tool']:17s} {c['method']:12s} x{c['milestones']:<3d} {c['frames_per_s']:8.2f} frames/s "
              f"{c['cpu_ms_per_frame']:8.1f} CPU ms/frame{ratio}")
    print(f"wrote {stem}.md and .json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    if args.render:
        return main_render(args, info)
    counts = [int(x) for x in args.milestones.split(",")]
    obs = observations(max(args.steps, args.baseline_frames) + max(counts))
    baseline = None if args.skip_baseline else PaperModel(demo_checkpoints()[-1])
    cases = build_cases(args, device, obs, baseline)
    for _, fn, _ in cases:  # warm-up: the first calls build matrices and allocate
        fn()
    runs: list[list[dict]] = [[] for _ in cases]
    for r in range(args.repeat):
        for i, (meta, fn, frames) in enumerate(cases):
            runs[i].append(timed(fn, frames))
            print(f"round {r + 1}: {meta['tool']} {meta['method']} x{meta['milestones']}: "
                  f"{runs[i][-1]['frames_per_s']:.2f} frames/s", flush=True)
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results = [{**meta, **median_run(rs)} for (meta, _, _), rs in zip(cases, runs, strict=True)]
    base_fps = results[0]["frames_per_s"] if baseline is not None else None
    for c in results:
        c["x_baseline"] = None if base_fps is None or c["tool"] != "gpurender" else c["frames_per_s"] / base_fps

    agreement = None
    if baseline is not None and "perturbation" in args.methods.split(","):
        mine = SaliencyComputer([Agent(demo_checkpoints()[-1], device=device)], "perturbation").maps(obs[:1])
        ref_actor, ref_critic = saliency_frame(baseline, obs[0])
        agreement = {"actor": pearson(mine.actor[0], ref_actor), "critic": pearson(mine.critic[0], ref_critic)}

    result = {
        "name": args.name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/bench_saliency.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": info,
        "game": DEMO_GAME.name,
        "repeat": args.repeat,
        "observations": len(obs),
        "cases": results,
        "agreement": agreement,
        "note": args.note,
    }
    stem = args.results_dir / f"saliency-{args.name}"
    write_results(stem, result, markdown(result))
    for c in results:
        ratio = "" if c["x_baseline"] is None else f"  ({c['x_baseline']:.1f}x baseline)"
        print(f"{c['tool']:17s} {c['method']:12s} x{c['milestones']:<3d} {c['frames_per_s']:8.2f} frames/s "
              f"{c['cpu_ms_per_frame']:8.1f} CPU ms/frame{ratio}")
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
