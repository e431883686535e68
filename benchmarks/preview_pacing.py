"""Preview pacing: how steady is the window's frame rate, and does it drift?

Opens the real preview window (one milestone, an untrained PPO on Breakout unless ``--model-dir``
is given, playing ``--game``), warms up for a second, then records the start time of every frame
for ``--seconds`` at ``--fps`` (real-time pacing, the default mode), and finally runs
``--uncapped-seconds`` uncapped to show the headroom. Needs an X display::

    xvfb-run -a python benchmarks/preview_pacing.py                 # ~10 s at 30 fps (+3 s uncapped)
    xvfb-run -a python benchmarks/preview_pacing.py --fps 60 --seconds 5
    xvfb-run -a python benchmarks/preview_pacing.py --model-dir gpurender/demo/step_300000_pct_100.zip \
        --game <the demo's game, gpurender.demo.GAME>

Writes ``benchmarks/results/preview-pacing-<name>.json`` and ``.md``: mean frame interval, its
standard deviation (jitter), min / max and percentiles, frames later than 1.5 periods, schedule
resets, drift (actual minus ideal elapsed time over the run) and per-stage milliseconds, with the
machine (CPU model, cores, OpenGL renderer, load average) named.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_stages, run as a script
try:
    import gpurender  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_stages import machine_info, make_checkpoint, short_renderer

from gpurender.agents import pick_device
from gpurender.config import PreviewConfig, RenderConfig
from gpurender.demo import GAME as DEMO_GAME
from gpurender.games import resolve_game
from gpurender.preview import Preview

RESULTS = Path(__file__).resolve().parent / "results"


def summarise(starts: list[float], period: float) -> dict:
    """Frame-interval statistics (ms) and drift of a list of frame start times."""
    t = np.asarray(starts)
    gaps = np.diff(t) * 1000.0
    ideal = (len(t) - 1) * period
    actual = float(t[-1] - t[0])
    return {
        "frames": len(t),
        "target_ms": round(1000 * period, 3),
        "mean_ms": round(float(gaps.mean()), 3),
        "std_ms": round(float(gaps.std()), 3),
        "min_ms": round(float(gaps.min()), 3),
        "p50_ms": round(float(np.percentile(gaps, 50)), 3),
        "p95_ms": round(float(np.percentile(gaps, 95)), 3),
        "p99_ms": round(float(np.percentile(gaps, 99)), 3),
        "max_ms": round(float(gaps.max()), 3),
        "late_frames": int((gaps > 1.5 * 1000 * period).sum()),
        "fps_reached": round((len(t) - 1) / actual, 2),
        "elapsed_s": round(actual, 4),
        "ideal_elapsed_s": round(ideal, 4),
        "drift_ms": round(1000 * (actual - ideal), 2),
    }


def x_server() -> str:
    """``Xvfb :99`` when an Xvfb process is running here, else ``X display :0``."""
    display = os.environ.get("DISPLAY", "?")
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "Xvfb":
                return f"Xvfb {display}"
        except OSError:
            continue
    return f"X display {display}"


def measure(pv: Preview, seconds: float) -> tuple[list[float], dict[str, list[float]]]:
    """Frame start times and per-frame stage ms over ``seconds`` of the preview's own loop."""
    starts: list[float] = []
    stages: dict[str, list[float]] = {"infer": [], "env": [], "draw": []}
    pv.pacer.reset()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not pv.should_close:
        if pv.tick():
            starts.append(pv.last_frame_start)
            for k, v in pv.frame_ms.items():
                stages[k].append(v)
    return starts, stages


def _row(label: str, r: dict, paced: bool) -> str:
    late = f"{r['late_frames']} | {r['drift_ms']:+.1f}" if paced else "- | -"
    return (f"| {label} | {r['frames']} | {r['fps_reached']:.2f} | {r['mean_ms']:.2f} | {r['std_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['max_ms']:.2f} | {late} |")


def markdown(res: dict) -> str:
    m, p = res["machine"], res["paced"]
    st = res["stage_ms_median"]
    rows = [_row(f"paced {res['fps']} fps (target {p['target_ms']:.2f} ms)", p, True)]
    resets = f"{res['pacer_resets']} at {res['fps']} fps"
    if a := res.get("also"):
        rows.append(_row(f"paced {a['fps']} fps (target {a['target_ms']:.2f} ms)", a, True))
        resets += f", {a['pacer_resets']} at {a['fps']} fps"
    rows.append(_row("uncapped", res["uncapped"], False))
    return "\n".join([
        f"# Preview pacing — {m['name']}",
        "",
        f"- CPU: {m['cpu']} ({m['cores']} cores), torch {m['torch']} (threads: {m['torch_threads']}), "
        f"device `{m['device']}`",
        f"- OpenGL: {m['renderer']} in a glfw window on {m['display']}; swap interval 0, paced by the "
        "preview's deadline scheduler",
        f"- load average at start: {m['load_avg_at_start']} · {m['date']} · {res['seconds']} s per paced run "
        f"after a {res['warmup_s']} s warm-up"
        + (" · a load above the core count: other jobs were competing for the cores"
           if m["load_avg_at_start"][0] > (m["cores"] or 1) else ""),
        "",
        "| run | frames | fps reached | mean ms | std ms (jitter) | p95 ms | max ms | late (>1.5 periods) | drift ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Drift = actual minus ideal elapsed time from the first to the last paced frame "
        f"({p['elapsed_s']:.3f} s vs {p['ideal_elapsed_s']:.3f} s at {res['fps']} fps). Schedule resets (a frame "
        f"over a period late): {resets}. A rate the machine cannot sustain (per-frame work above the period) "
        "shows up as late frames and drift; the uncapped row is the ceiling.",
        "",
        f"Median per-frame work at {res['fps']} fps: inference {st['infer']:.2f} ms, env step {st['env']:.2f} ms, "
        f"draw + show {st['draw']:.2f} ms (pack, 6 instanced draws, present blit, swap).",
        "",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="paced run length")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds drawn before measuring")
    ap.add_argument("--uncapped-seconds", type=float, default=3.0)
    ap.add_argument("--also-fps", type=int, default=15,
                    help="a second paced run at this rate, one the machine can sustain (0: none)")
    ap.add_argument("--model-dir", type=Path, help="checkpoint(s) to show (default: an untrained PPO on Breakout)")
    ap.add_argument("--game", default="Breakout",
                    help=f"the game the --model-dir checkpoints play (default Breakout; the bundled demo's is "
                         f"{DEMO_GAME})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as `gpurender preview` on CPU)")
    ap.add_argument("--name", default="vm", help="machine name in the result file names")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.model_dir is None and resolve_game(args.game).name != "Breakout":
        ap.error(f"--game {args.game} needs --model-dir: the default agent is an untrained PPO on Breakout")
    if not os.environ.get("DISPLAY"):
        print("preview_pacing: no DISPLAY; run it under `xvfb-run -a`", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or make_checkpoint(Path(tmp), "pct_50.zip")
        cfg = RenderConfig(model_dir=(model_dir,), game=args.game, fps=args.fps, device="cpu")
        info = machine_info(pick_device(cfg.device))
        with Preview(cfg, PreviewConfig(output_dir=Path(tmp))) as pv:
            measure(pv, args.warmup)
            starts, stages = measure(pv, args.seconds)
            resets = pv.pacer.resets
            also, also_resets = None, 0
            if args.also_fps:
                pv.cfg = replace(cfg, fps=args.also_fps)
                pv.pacer.resets = 0
                also, _ = measure(pv, args.seconds)
                also_resets = pv.pacer.resets
                pv.cfg = cfg
            pv.uncapped = True
            free, _ = measure(pv, args.uncapped_seconds)
            info["renderer"] = short_renderer(pv.renderer.renderer)
            info["gl"] = pv.renderer.renderer
    info.update(name=args.name, display=x_server(),
                date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    res = {
        "machine": info,
        "game": args.game,
        "fps": args.fps,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "paced": summarise(starts, 1.0 / args.fps),
        "uncapped": summarise(free, 1.0 / args.fps),
        "pacer_resets": resets,
        "also": None if also is None else {"fps": args.also_fps, **summarise(also, 1.0 / args.also_fps),
                                           "pacer_resets": also_resets},
        "stage_ms_median": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "frame_starts_s": [round(t - starts[0], 6) for t in starts],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"preview-pacing-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
