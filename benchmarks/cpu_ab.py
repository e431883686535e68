"""Same-run A/B of two source trees: the whole ``gpurender render`` command of each, alternating
(A, B, B, A, A, B, ...), CPU seconds of the process tree and wall per run, the median ratios.

    python benchmarks/cpu_ab.py --a /tmp/base15 --b . --runs 6
    python benchmarks/cpu_ab.py --a /tmp/base15 --b . --runs 6 --milestones 4 --seconds 30

Each tree's ``gpurender/`` is imported through ``PYTHONPATH`` with ``PYTHONSAFEPATH=1`` (so the
working folder's checkout is not imported instead). The job is the bundled demo milestones on the
demo's own game, repeated to ``--milestones`` copies as ``bench.py`` does. On a VM whose speed
drifts, only these same-run ratios are comparable; absolute times are printed for the record.
The CPU is split by process and thread kind as ``bench.py`` splits it (see benchmarks/README.md).
With ``--own-demo`` each tree renders its own bundled demo checkpoints on its own demo's game (to
count a change to the archives); otherwise both render this checkout's. The load average is
printed before and after, and whether the two trees wrote byte-identical videos.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import demo_game, measure, milestone_dir, source_checkpoints  # noqa: E402

from gpurender.games import resolve_game  # noqa: E402

FPS = 30


def run_once(tree: Path, run_dir: Path, game: str, seconds: float, work: Path, tag: str, extra: list[str]) -> dict:
    """One whole command with ``tree``'s code on ``run_dir``'s checkpoints, which play ``game``;
    -> wall, CPU seconds, CPU by thread kind."""
    out_dir = work / tag
    cmd = [sys.executable, "-m", "gpurender", "render", "--model-dir", str(run_dir), "--game", game,
           "--output-dir", str(out_dir), "--clip-seconds", f"{seconds:g}", "--fps", str(FPS), "--quiet", "--force",
           *extra]
    env_before = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"], os.environ["PYTHONSAFEPATH"] = str(tree.resolve()), "1"
    try:
        m = measure(cmd, work / f"{tag}.log")
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if m.returncode != 0:
        raise SystemExit(f"{tag} failed (exit {m.returncode}):\n{m.log_tail}")
    videos = sorted(out_dir.glob("*.mp4"))
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "cpu_by_role": m.cpu_by_role,
            "mp4_bytes": [p.stat().st_size for p in videos],
            "mp4_sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in videos]}


def tree_demo(tree: Path) -> list[Path]:
    """``tree``'s own bundled demo checkpoints, in training order."""
    from gpurender.milestones import find_milestones

    return [m.path for m in find_milestones([tree / "gpurender" / "demo"])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="the old tree (a checkout's root folder)")
    ap.add_argument("--b", type=Path, required=True, help="the new tree")
    ap.add_argument("--runs", type=int, default=6, help="runs of each tree (default 6)")
    ap.add_argument("--milestones", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", type=Path, help="write every run here")
    ap.add_argument("--own-demo", action="store_true", help="each tree renders its own bundled demo checkpoints")
    ap.add_argument("extra", nargs="*", help="more `gpurender render` flags (after --)")
    args = ap.parse_args(argv)
    frames = args.milestones * round(args.seconds * FPS)
    with tempfile.TemporaryDirectory(prefix="cpu-ab-") as tmp:
        work = Path(tmp)
        shared = None if args.own_demo else source_checkpoints(work)
        run_dirs, games = {}, {}
        for side in ("a", "b"):
            (work / side).mkdir()
            tree = getattr(args, side)
            if shared is None:
                sources, games[side] = tree_demo(tree), resolve_game(demo_game(tree)).name
            else:
                sources, games[side] = shared.paths, shared.game
            run_dirs[side] = milestone_dir(sources, args.milestones, work / side)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        runs: dict[str, list[dict]] = {"a": [], "b": []}
        order = [("a", "b") if i % 2 == 0 else ("b", "a") for i in range(args.runs)]
        for i, pair in enumerate(order):
            for side in pair:
                tree = args.a if side == "a" else args.b
                r = run_once(tree, run_dirs[side], games[side], args.seconds, work, f"{side}{i}", args.extra)
                runs[side].append(r)
                print(f"{side} run {i}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s = "
                      f"{1e3 * r['cpu_s'] / frames:.2f} ms/frame, mp4 {sum(r['mp4_bytes']) / 1e6:.2f} MB", flush=True)
    a, b = runs["a"], runs["b"]
    cpu_ratios = [rb["cpu_s"] / ra["cpu_s"] for ra, rb in zip(a, b, strict=True)]
    wall_ratios = [rb["wall_s"] / ra["wall_s"] for ra, rb in zip(a, b, strict=True)]
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n{args.milestones} milestones x {args.seconds:g} s, {frames} frames, {args.runs} alternating pairs")
    same = all(r["mp4_sha256"] == a[0]["mp4_sha256"] for r in a + b)
    print(f"every run of both trees wrote byte-identical videos: {'yes' if same else 'NO'}")
    for side, rs in (("a", a), ("b", b)):
        cpu = statistics.median(r["cpu_s"] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        print(f"{side} ({getattr(args, side)}): median CPU {1e3 * cpu / frames:.2f} ms/frame, wall {wall:.1f} s, "
              f"{frames / wall:.1f} frames/s")
        roles = sorted({k for r in rs for k in r["cpu_by_role"]})
        for role in roles:
            med = statistics.median(r["cpu_by_role"].get(role, 0.0) for r in rs)
            print(f"    {role:<40} {1e3 * med / frames:6.2f} ms/frame")
    print("CPU ratios b/a: " + ", ".join(f"{x:.3f}" for x in cpu_ratios) +
          f"  median {statistics.median(cpu_ratios):.3f}")
    print("wall ratios b/a: " + ", ".join(f"{x:.3f}" for x in wall_ratios) +
          f"  median {statistics.median(wall_ratios):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
