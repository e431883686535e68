"""Scaling: one render job as 1, 2, 4 … local pipelines (``--workers``) and as Ray tasks on a
local cluster (``--ray``), whole commands side by side, cases alternating within each repeat.

    python benchmarks/bench_scaling.py --milestones 16 --seconds 30 --workers 1,2,4 --ray --repeat 3

Per case (medians over the repeats): frames/s, wall, CPU seconds of the whole process tree,
CPU ms per frame, the CPU bound (the frames/s this CPU cost allows with every core busy), cores
busy (CPU s / wall) and the peak summed RSS. Ray runs inside a private network namespace with
only the loopback (``unshare -n``, root): these machines may send nothing else, and a local Ray
cluster outside one binds the machine's interface. Results go to
``benchmarks/results/scaling-<name>.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, machine, measure, milestone_dir, source_checkpoints, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=socket.gethostname(), help="machine name for the results files")
    p.add_argument("--milestones", type=int, default=16, help="milestones of the job (default 16)")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length (default 30)")
    p.add_argument("--workers", default="1,2,4", help="local pipeline counts, 'auto' among them (default 1,2,4)")
    p.add_argument("--ray", action="store_true", help="also the job as Ray tasks on a local cluster")
    p.add_argument("--ray-workers", type=int, default=0, help="Ray tasks (default: the largest --workers)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each case; the median is kept")
    p.add_argument("--device", default="auto", help="torch device (default auto)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_args(argv)


def command(case: str, n: int | str, run_dir: Path, game: str, out: Path, args: argparse.Namespace) -> list[str]:
    """The render of ``run_dir``'s checkpoints (which play ``game``) as ``n`` local pipelines or Ray tasks."""
    render = [sys.executable, "-m", "gpurender", "render", "--model-dir", str(run_dir), "--game", game,
              "--output-dir", str(out), "--clip-seconds", f"{args.seconds:g}", "--device", args.device, "--force",
              "--quiet", "--workers", str(n)]
    if case == "ray":
        render.append("--ray")
        return ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {shlex.join(render)}"]
    return render


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    workers = [w if w == "auto" else int(w) for w in args.workers.split(",")]
    cases = [("workers", n) for n in workers]
    if args.ray:
        cases.append(("ray", args.ray_workers or max(w for w in workers if w != "auto")))
    cores = len(os.sched_getaffinity(0))
    frames = round(args.seconds * 30) * args.milestones
    info = machine(args.device, "auto")
    runs: dict[str, list] = {f"{c} {n}": [] for c, n in cases}
    with tempfile.TemporaryDirectory(prefix="gpurender-scaling-") as tmp:
        work = Path(tmp)
        sources, described, game = source_checkpoints(work)
        run_dir = milestone_dir(sources, args.milestones, work)
        for r in range(args.repeat):
            for case, n in cases:
                key = f"{case} {n}"
                out = work / f"out-{case}-{n}"
                m = measure(command(case, n, run_dir, game, out, args), work / f"{case}-{n}-{r}.log")
                if m.returncode != 0:
                    print(f"{key} failed:\n{m.log_tail}", file=sys.stderr)
                    return 1
                # Ray's daemons are not all waited for by their parents (RUSAGE_CHILDREN misses them):
                # their threads' CPU as sampled from /proc is the better count there
                m.cpu_s = max(m.cpu_s, sum(m.cpu_by_role.values()))
                runs[key].append(m)
                print(f"[{r + 1}/{args.repeat}] {key}: {frames / m.wall_s:.1f} frames/s, wall {m.wall_s:.1f} s, "
                      f"CPU {m.cpu_s:.1f} s, peak RSS {m.peak_rss_mib:.0f} MiB", flush=True)
    rows = []
    for key, ms in runs.items():
        wall = statistics.median(m.wall_s for m in ms)
        cpu = statistics.median(m.cpu_s for m in ms)
        rows.append({"case": key, "frames": frames, "wall_s": round(wall, 2), "fps": round(frames / wall, 1),
                     "cpu_s": round(cpu, 1), "cpu_ms_per_frame": round(1000 * cpu / frames, 2),
                     "cpu_bound_fps": round(frames / (cpu / cores), 1), "cores_busy": round(cpu / wall, 2),
                     "peak_rss_mib": round(statistics.median(m.peak_rss_mib for m in ms)),
                     "walls": [round(m.wall_s, 2) for m in ms]})
    result = {"name": args.name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info,
              "checkpoints": described, "milestones": args.milestones, "seconds": args.seconds,
              "repeat": args.repeat, "cores": cores, "rows": rows, "argv": sys.argv[1:]}
    stem = args.results_dir / f"scaling-{args.name}"
    write_results(stem, result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    info = result["machine"]
    lines = [f"# gpurender scaling — {result['name']}", "",
             f"{result['date']} · commit {info.get('commit')} · `python benchmarks/bench_scaling.py "
             f"{' '.join(result['argv'])}`", "",
             f"{info.get('cpu')} · {result['cores']} cores · {info.get('ram_gib')} GiB · GPUs: "
             f"{', '.join(info.get('gpus') or []) or 'none'} · torch on {info.get('torch_device')} · "
             f"{info.get('encoder')}", "",
             f"Job: {result['milestones']} milestones x {result['seconds']:g} s ({result['rows'][0]['frames']:,} "
             f"frames), {result['checkpoints']}. Whole commands, start-up included; medians of "
             f"{result['repeat']} runs, cases alternating. CPU bound = frames / (CPU s / cores): the frames/s "
             "this CPU cost allows with every core busy. Cores busy = CPU s / wall.", "",
             "| case | frames/s | wall s | CPU s | CPU ms/frame | CPU bound frames/s | cores busy | peak RSS MiB "
             "| walls |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['fps']} | {r['wall_s']} | {r['cpu_s']} | {r['cpu_ms_per_frame']} | "
                     f"{r['cpu_bound_fps']} | {r['cores_busy']} | {r['peak_rss_mib']:,} | "
                     f"{', '.join(map(str, r['walls']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
