"""The benchmark suite: where the time goes, and how much faster than the original tool.

1. Stages (``bench_stages.py``): env steps/s, inference obs/s, panel packing, drawing, readback
   (I420 vs RGB) and encoding frames/s at batch sizes 1, 8, 32, 128; median of 5 repetitions.
2. End to end: the real ``python -m gpurender render`` command, run as a subprocess (start-up
   included) on 1, 4 and 16 milestones; wall time, frames/s of finished video, real-time factor,
   peak RSS of the process tree and the job's own stage split.
3. Memory against clip length: one milestone at 10 s and 90 s.
4. The baseline (``baseline_seed.py``, the original OpenCV tool, one process per core) on the same
   checkpoints and frame counts, in the same invocation; the headline is the gpurender/baseline
   frames/s ratio at 4 milestones.

    python benchmarks/bench.py --name vm                  # full suite (~20 min on 2 cores)
    python benchmarks/bench.py --quick                    # 1-2 milestones x 2 s, a sanity check
    gpurender bench --name h100 --milestones 1,4,16,64    # the same file through the CLI

Writes ``<name>.md``, ``.json`` and ``.png`` to ``--results-dir``: ``benchmarks/results/`` for a
full run; a ``--quick`` run (named ``quick-<name>``: not results to commit) writes to a new folder
under the system's temporary folder unless told otherwise. See ``benchmarks/README.md`` for what
each number means.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
try:
    import gpurender  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

FPS = 30
POLL_S = 0.1
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
HEADLINE_MILESTONES = 4


# -- running one command and measuring it ------------------------------------------------------


def _tree(pid: int) -> list[tuple[int, int]]:
    """``pid`` and all its descendants as (pid, parent pid), parents first (Linux
    ``/proc/<pid>/task/<tid>/children``)."""
    out, todo = [], [(pid, 0)]
    while todo:
        p, parent = todo.pop(0)
        out.append((p, parent))
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [(int(c), p) for c in f.read().split()]
        except OSError:  # exited meanwhile
            continue
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _threads_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Every thread of ``pid``: tid -> (name, user + system CPU seconds so far)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def _process_role(pid: int, root: int, parent_role: str | None) -> str | None:
    """``main process`` (the tool's own interpreter), ``worker process`` (any process under it:
    gpurender's simulation, the baseline's pool), ``resource tracker``, or None (GNU time)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if pid == root and GNU_TIME is not None and cmdline.startswith(GNU_TIME):
        return None
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return "main process" if parent_role is None else "worker process"


def thread_role(process: str, pid: int, tid: int, name: str) -> str:
    """``main process · main thread``, ``main process · llvmpipe threads`` (Mesa's rasterisers),
    ``worker process · other threads``, ..."""
    if tid == pid:
        kind = "main thread"
    elif name.startswith("llvmpipe"):
        kind = "llvmpipe threads"
    else:
        kind = "other threads"
    return f"{process} · {kind}"


def _rss_pss_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class TreeMonitor(threading.Thread):
    """Polls a process tree every ``POLL_S``: the peaks of its summed RSS and PSS, and the CPU
    seconds of every thread it has had, by :func:`thread_role` (a thread that ends between two
    polls loses at most its last ``POLL_S`` of CPU here; the exact total is ``Measured.cpu_s``).

    RSS summed over processes counts shared pages (torch's libraries in every baseline worker)
    once per process; PSS splits them between the processes that share them."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss_kib = self.peak_pss_kib = 0
        self.peak_procs = 0
        self.stop = threading.Event()
        self._roles: dict[int, str | None] = {}
        self._cpu: dict[tuple[int, int], tuple[str, float]] = {}  # (pid, tid) -> (role, last CPU s seen)

    def run(self) -> None:
        while not self.stop.is_set():
            tree = _tree(self.pid)
            sizes = [_rss_pss_kib(p) for p, _ in tree]
            self.peak_rss_kib = max(self.peak_rss_kib, sum(s[0] for s in sizes))
            self.peak_pss_kib = max(self.peak_pss_kib, sum(s[1] for s in sizes))
            self.peak_procs = max(self.peak_procs, len(tree))
            for p, parent in tree:
                if p not in self._roles:
                    self._roles[p] = _process_role(p, self.pid, self._roles.get(parent))
                process = self._roles[p]
                if process is None:
                    continue
                for tid, (name, cpu) in _threads_cpu(p).items():
                    self._cpu[p, tid] = (thread_role(process, p, tid, name), cpu)
            self.stop.wait(POLL_S)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds per :func:`thread_role`, largest first."""
        out: dict[str, float] = {}
        for role, cpu in self._cpu.values():
            out[role] = out.get(role, 0.0) + cpu
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass
class Measured:
    """One command, timed from launch to exit."""

    wall_s: float
    returncode: int
    peak_rss_mib: float
    """Peak of the summed RSS of the process tree (polled every 0.1 s)."""
    peak_pss_mib: float
    """Peak of the summed PSS of the process tree (shared pages split between sharers)."""
    max_process_rss_mib: float | None
    """Largest peak RSS of any one process of the tree, exact (``/usr/bin/time``'s ``%M``);
    None without GNU time. (``wait4``'s own ``ru_maxrss`` is useless here: it keeps the size
    of the forking parent, i.e. this benchmark, from before the ``exec``.)"""
    processes: int
    cpu_s: float = 0.0
    """User + system CPU seconds of the whole tree (every process waited for: ``RUSAGE_CHILDREN``)."""
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    """:meth:`TreeMonitor.cpu_by_role`."""
    log_tail: str = ""


def measure(cmd: list[str], log: Path) -> Measured:
    """Run ``cmd`` in the repository root, output to ``log``; wall by ``perf_counter`` around it."""
    peak_file = log.with_suffix(".maxrss")
    if GNU_TIME is not None:
        cmd = [GNU_TIME, "-f", "%M", "-o", str(peak_file), *cmd]
    with log.open("w") as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        mem = TreeMonitor(proc.pid)
        mem.start()
        proc.wait()
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        mem.stop.set()
        mem.join()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    max_rss = None
    try:
        max_rss = int(peak_file.read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak_file.unlink(missing_ok=True)
    tail = "" if proc.returncode == 0 else "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    return Measured(wall, proc.returncode, mem.peak_rss_kib / 1024, mem.peak_pss_kib / 1024, max_rss,
                    mem.peak_procs, cpu, mem.cpu_by_role(), tail)


# -- checkpoints -----------------------------------------------------------------------------------


def write_results(stem: Path, result: dict, markdown_text: str) -> None:
    """``stem``.json (``result``) and ``stem``.md (``markdown_text``), the folder made if needed."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown_text)


def demo_game(tree: Path = ROOT) -> str:
    """The game the bundled demo checkpoints of the checkout ``tree`` play (its
    ``gpurender.demo.GAME``), read from the source, not imported: the gpurender imported here may
    be another checkout's (``cpu_ab.py``'s trees, ``gpu_check.sh``'s ``BASELINE``). Breakout for a
    tree from before the demo named its game."""
    source = (tree / "gpurender" / "demo" / "__init__.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GAME" for t in node.targets):
            return ast.literal_eval(node.value)
    return "Breakout"


class Checkpoints(NamedTuple):
    """What a benchmark renders: checkpoints in training order and the game they play."""

    paths: list[Path]
    described: str
    """What they are, for the report."""
    game: str
    """Their game as ``gpurender render --game`` takes it (``Breakout``, ``RoadRunner``...)."""


def source_checkpoints(tmp: Path) -> Checkpoints:
    """The bundled demo milestones in training order on the demo's game, or (if absent) an
    untrained PPO CnnPolicy Breakout agent."""
    demo = ROOT / "gpurender" / "demo"
    if any(demo.glob("*.zip")):
        from gpurender.games import resolve_game
        from gpurender.milestones import find_milestones

        found = [m.path for m in find_milestones([demo])]
        game = resolve_game(demo_game()).name
        return Checkpoints(found, f"bundled demo milestones on {game} ({', '.join(p.name for p in found)})", game)
    from bench_stages import make_checkpoint

    folder = tmp / "untrained"
    folder.mkdir()
    return Checkpoints([make_checkpoint(folder)], "untrained PPO CnnPolicy Breakout (no bundled demo milestones yet)",
                       "Breakout")


def milestone_dir(sources: list[Path], n: int, tmp: Path) -> Path:
    """A run folder with ``n`` checkpoints named ``pct_<k>.zip``: copies of ``sources`` spread
    evenly over them, the last always the most trained (so 1 milestone = the final agent)."""
    folder = tmp / f"run{n}"
    if not folder.exists():
        folder.mkdir()
        for i in range(n):
            src = sources[((i + 1) * len(sources) - 1) // n]
            shutil.copy(src, folder / f"pct_{(i + 1) * 100 // n}.zip")
    return folder


# -- end-to-end runs -------------------------------------------------------------------------------


@dataclass
class Run:
    """One whole command: a tool rendering ``milestones`` clips of ``clip_seconds``."""

    tool: str
    """gpurender | baseline"""
    milestones: int
    clip_seconds: float
    frames: int
    """Frames of finished video: milestones x clip seconds x 30."""
    wall_s: float
    fps: float
    """Frames of finished video per wall second."""
    realtime: float
    """Seconds of finished video per wall second (all milestones together)."""
    peak_rss_mib: float
    peak_pss_mib: float
    max_process_rss_mib: float | None
    processes: int
    ok: bool = True
    inner: dict = field(default_factory=dict)
    """What the tool reports about itself (gpurender ``--stats-json``, baseline ``--json``)."""
    cpu_s: float | None = None
    """User + system CPU seconds of the whole command, every process and thread."""
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    """CPU seconds by process and thread kind (:func:`thread_role`)."""

    @property
    def cpu_ms_per_frame(self) -> float | None:
        return None if self.cpu_s is None else 1e3 * self.cpu_s / self.frames

    def min_wall_s(self, cores: int) -> float | None:
        """The wall time no schedule can beat on ``cores`` cores: this much CPU, every core busy
        all the time."""
        return None if self.cpu_s is None else self.cpu_s / cores

    @property
    def startup_s(self) -> float | None:
        """Wall time outside the render job: interpreter, imports, checkpoint loading, exit."""
        inner = self.inner.get("wall_seconds") or self.inner.get("run_s")
        return self.wall_s - inner if inner else None

    @property
    def first_frame_s(self) -> float | None:
        """From the command's start to its first frames drawn (gpurender only: the original tool
        writes each video only once all its frames exist)."""
        first, startup = self.inner.get("first_frame_seconds"), self.startup_s
        return startup + first if first is not None and startup is not None else None


def run_tool(tool: str, run_dir: Path, n: int, seconds: float, work: Path, args: argparse.Namespace,
             game: str | None = None) -> Run:
    """One whole command of ``tool`` on the checkpoints in ``run_dir``, which play ``game``
    (None: each tool's default, Breakout)."""
    frames_each = max(1, round(seconds * FPS))
    tag = f"{tool}-{n}x{frames_each}"
    out_dir, stats = work / tag, work / f"{tag}.json"
    shutil.rmtree(out_dir, ignore_errors=True)
    if tool == "gpurender":
        cmd = [sys.executable, "-m", "gpurender", "render", "--model-dir", str(run_dir), "--output-dir", str(out_dir),
               "--clip-seconds", f"{seconds:g}", "--fps", str(FPS), "--quiet", "--force", "--stats-json", str(stats),
               "--device", args.device, "--encoder", args.encoder, *(["--game", game] if game else [])]
    else:
        from gpurender.games import resolve_game

        cmd = [sys.executable, str(HERE / "baseline_seed.py"), "--checkpoints",
               *map(str, sorted(run_dir.glob("*.zip"))), "--output-dir", str(out_dir),
               "--frames", str(frames_each), "--fps", str(FPS), "--procs", str(os.cpu_count() or 1),
               "--json", str(stats), *(["--env", resolve_game(game).gym_id] if game else [])]
    m = measure(cmd, work / f"{tag}.log")
    inner = json.loads(stats.read_text()) if stats.is_file() else {}
    stats.unlink(missing_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    frames = n * frames_each
    ok = m.returncode == 0 and inner.get("frames") == frames
    if not ok:
        print(f"!! {tool} {n}x{frames_each} failed (exit {m.returncode}, frames {inner.get('frames')} "
              f"of {frames}):\n{m.log_tail}", flush=True)
    return Run(tool, n, seconds, frames, m.wall_s, frames / m.wall_s, frames / FPS / m.wall_s, m.peak_rss_mib,
               m.peak_pss_mib, m.max_process_rss_mib, m.processes, ok, inner, m.cpu_s, m.cpu_by_role)


def best_of(runs: list[Run]) -> Run:
    """The median run by wall time (``--repeat``)."""
    return sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]


def headline(g: Run, b: Run | None) -> str:
    """The CleanRL-style one-liner of a case."""
    each = round(g.clip_seconds * FPS)
    line = f"gpurender {g.milestones}x{each} frames: {g.fps:.1f} fps ({g.realtime:.1f}x real time)"
    if b is not None:
        line += f", baseline {b.fps:.1f} fps -> {g.fps / b.fps:.1f}x"
    return line


# -- machine -----------------------------------------------------------------------------------


def machine(device_arg: str, encoder_arg: str) -> dict:
    import torch
    from bench_stages import machine_info

    from gpurender.agents import pick_device
    from gpurender.encode import choose_encoder

    device = pick_device(device_arg)
    info = machine_info(device)
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["ram_gib"] = round(kib / 2**20, 1)
    except (OSError, AttributeError):
        info["ram_gib"] = None
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.strip().splitlines()
        info["gpus"] = names
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    info["encoder"], info["encoder_reason"] = choose_encoder(encoder_arg)
    info["torch_device"] = str(device)
    info["torch_threads"] = torch.get_num_threads()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def renderer_name() -> str:
    from gpurender.errors import GpurenderError
    from gpurender.render.context import create_headless_context
    from gpurender.render.context import renderer_name as name

    try:
        ctx = create_headless_context()
    except GpurenderError as exc:
        return f"unavailable: {exc}"
    try:
        return name(ctx)
    finally:
        ctx.release()


# -- report ------------------------------------------------------------------------------------


def _mib(x: float) -> str:
    return f"{x:,.0f}"


def e2e_table(runs: list[Run]) -> str:
    """One row per run; a column per key of gpurender's ``stage_seconds``, whatever the pipeline reports."""
    keys = list(dict.fromkeys(k for r in runs for k in r.inner.get("stage_seconds", {})))
    lines = [
        "| tool | milestones | clip s | frames | wall s | frames/s | x real time | CPU s | CPU ms/frame "
        "| peak RSS MiB | peak PSS MiB | start-up s | first frame s |" + "".join(f" {k} s |" for k in keys),
        "|---|" + "---:|" * (12 + len(keys)),
    ]
    for r in runs:
        st = r.inner.get("stage_seconds", {})
        startup = r.startup_s
        cells = [r.tool + ("" if r.ok else " (FAILED)"), str(r.milestones), f"{r.clip_seconds:g}", f"{r.frames:,}",
                 f"{r.wall_s:.1f}", f"{r.fps:.1f}", f"{r.realtime:.2f}",
                 "-" if r.cpu_s is None else f"{r.cpu_s:.1f}",
                 "-" if r.cpu_ms_per_frame is None else f"{r.cpu_ms_per_frame:.1f}",
                 _mib(r.peak_rss_mib), _mib(r.peak_pss_mib),
                 "-" if startup is None else f"{startup:.1f}",
                 "-" if r.first_frame_s is None else f"{r.first_frame_s:.1f}",
                 *(f"{st[k]:.1f}" if k in st else "-" for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def memory_table(runs: list[Run]) -> str:
    lines = ["| tool | clip s | frames | peak RSS MiB | peak PSS MiB | largest process MiB | long / short |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for tool in ("gpurender", "baseline"):
        mine = [r for r in runs if r.tool == tool]
        for r in mine:
            ratio = f"{r.peak_rss_mib / mine[0].peak_rss_mib:.2f}" if r is not mine[0] else ""
            largest = "-" if r.max_process_rss_mib is None else _mib(r.max_process_rss_mib)
            lines.append(f"| {tool} | {r.clip_seconds:g} | {r.frames:,} | {_mib(r.peak_rss_mib)} | "
                         f"{_mib(r.peak_pss_mib)} | {largest} | {ratio} |")
    return "\n".join(lines) + "\n"


def cpu_table(runs: list[Run]) -> str:
    """Each run's CPU by process and thread kind, as seconds and ms per frame of video."""
    lines = ["| tool | milestones | process · threads | CPU s | ms per frame | share |",
             "|---|---:|---|---:|---:|---:|"]
    for r in runs:
        if not r.cpu_s:
            continue
        rest = r.cpu_s - sum(r.cpu_by_role.values())
        roles = list(r.cpu_by_role.items()) + ([("(ended between two polls)", rest)] if rest >= 0.05 else [])
        for role, cpu in roles:
            if cpu >= 0.05:
                lines.append(f"| {r.tool} | {r.milestones} | {role} | {cpu:.1f} | {1e3 * cpu / r.frames:.2f} | "
                             f"{100 * cpu / r.cpu_s:.0f} % |")
    return "\n".join(lines) + "\n"


def ratio_bound(g: Run, b: Run, cores: int) -> float | None:
    """The highest gpurender/baseline frames/s ratio gpurender's measured CPU work allows on
    ``cores`` cores: the baseline's wall over gpurender's wall with every core busy throughout."""
    floor = g.min_wall_s(cores)
    return b.wall_s / floor if floor else None


def markdown(result: dict, stage_rows: list) -> str:
    from bench_stages import stage_table

    m = result["machine"]
    e2e = [Run(**r) for r in result["end_to_end"]]
    mem = [Run(**r) for r in result["memory"]]
    gpus = ", ".join(m["gpus"]) or "none"
    out = [
        f"# gpurender benchmark — {m['name']}\n",
        f"{m['date']} · {'--quick' if result['quick'] else 'full'} run · commit {m.get('commit') or '?'} · "
        f"`{result['command']}`\n",
        "| machine | |\n|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| GPU | {gpus} |",
        f"| OpenGL renderer | {m['renderer']} |",
        f"| encoder | {m['encoder']} ({m['encoder_reason']}) |",
        f"| torch | {m['torch']} on `{m['torch_device']}`, {m['torch_threads']} threads |",
        f"| load average at start / end | {m['load_avg_at_start']} / {m.get('load_avg_at_end')} |",
        f"| checkpoints | {result['checkpoints']} |",
        "",
    ]
    if stage_rows:
        out += [f"## Stages (median of {result['reps']} repetitions)\n",
                "Draw and readback go in passes of the renderer's tiles; encode = `batch` videos in parallel, one "
                "codec thread each; ms per call = one batch (one frame of each video for encode).\n",
                stage_table(stage_rows)]
    if e2e:
        out += ["## End to end\n",
                "Whole command as a subprocess (start-up included). frames/s = frames of finished video / wall; "
                "x real time = video seconds / wall second. Start-up = wall - the job's own wall (interpreter, "
                "imports, exit). First frame = from the command's start to gpurender's first frames drawn "
                "(checkpoints loaded, envs made, GL and encoders open). Stage seconds are "
                "gpurender's own accounting of overlapping processes and threads (they do not sum to the wall).\n",
                e2e_table(e2e)]
    if any(r.cpu_s for r in e2e):
        out += ["## CPU by process and thread\n",
                "User + system CPU of every thread of the command, sampled from `/proc` every 0.1 s (the total is "
                "exact, from the kernel's accounting of the waited-for process tree). gpurender: the main process's "
                "main thread packs the panels and issues the GL calls (on llvmpipe also the vertex work), its "
                "llvmpipe threads rasterise, its other threads are the encoders (I420 conversion + x264); the worker "
                "process is the simulation (main thread: forwards and the env wrapper; other threads: EnvPool's "
                "emulators). Baseline: the worker processes do everything.\n",
                cpu_table(e2e)]
    if mem:
        out += ["## Memory against clip length (1 milestone)\n", memory_table(mem)]
    if result.get("headline"):
        out += ["## Against the baseline\n", result["headline"] + "\n"]
        if result.get("ratios"):
            cores = m["cores"]
            out += [f"*CPU bound*: the ratio gpurender's measured CPU work allows on {cores} cores at best, i.e. the "
                    f"baseline's wall over gpurender's CPU seconds / {cores} (every core busy from start to exit).\n",
                    "| milestones | gpurender frames/s | baseline frames/s | ratio | gpurender CPU ms/frame "
                    "| baseline CPU ms/frame | CPU bound |", "|---:|---:|---:|---:|---:|---:|---:|"]
            for x in result["ratios"]:
                g_cpu, b_cpu, bound = x.get("gpurender_cpu_ms"), x.get("baseline_cpu_ms"), x.get("cpu_bound")
                out.append(f"| {x['milestones']} | {x['gpurender_fps']:.1f} | {x['baseline_fps']:.1f} | "
                           f"{x['ratio']:.2f}x | {'-' if g_cpu is None else f'{g_cpu:.1f}'} | "
                           f"{'-' if b_cpu is None else f'{b_cpu:.1f}'} | "
                           f"{'-' if bound is None else f'{bound:.2f}x'} |")
            out.append("")
    return "\n".join(out)


def plot_fps(series: list[tuple[str, str, list[tuple[int, float]]]], path: Path, title: str) -> bool:
    """frames/s against milestones, one line per (label, matplotlib style, [(milestones, fps)])."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", flush=True)
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, style, points in series:
        points = sorted(points)
        ax.plot([m for m, _ in points], [fps for _, fps in points], style, label=label)
    ax.set_ylim(bottom=0)
    ax.set_xscale("log", base=2)
    xs = sorted({m for _, _, points in series for m, _ in points})
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("milestones rendered together")
    ax.set_ylabel("frames of finished video per second")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot(runs: list[Run], path: Path, title: str, cores: int) -> bool:
    series = [(tool, style, [(r.milestones, r.fps) for r in runs if r.tool == tool and r.ok])
              for tool, style in (("gpurender", "o-"), ("baseline", "s--"))]
    series.append((f"gpurender's CPU bound (CPU s / {cores} cores)", "^:",
                   [(r.milestones, r.frames / r.min_wall_s(cores)) for r in runs
                    if r.tool == "gpurender" and r.ok and r.cpu_s]))
    return plot_fps([s for s in series if s[2]], path, title)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="sanity check: stages with less work, 1,2 milestones x 2 s, memory at 3 s vs 6 s")
    p.add_argument("--name", default=None, help="machine name for the results files (default: host name)")
    p.add_argument("--milestones", default=None, help="milestone counts to render end to end (default 1,4,16)")
    p.add_argument("--seconds", type=float, default=None, help="clip length of the end-to-end runs (default 30)")
    p.add_argument("--memory-seconds", default=None, help="short,long clip for the memory case (default 10,90)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each end-to-end case; the median is kept")
    p.add_argument("--skip-baseline", action="store_true", help="do not run the original tool")
    p.add_argument("--skip-stages", action="store_true", help="no stage benchmarks")
    p.add_argument("--skip-memory", action="store_true", help="no clip-length memory case")
    p.add_argument("--skip-warmup", action="store_true",
                   help="no untimed 0.5 s run of each tool first (the first timed case then starts cold)")
    p.add_argument("--batches", default=None, help="stage batch sizes (default 1,8,32,128; --quick 1,8,32)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the stage benchmarks (default: torch's choice, as gpurender render)")
    p.add_argument("--device", default="auto", help="torch device for gpurender (auto: cuda if present)")
    p.add_argument("--encoder", default="auto", choices=("auto", "nvenc", "x264"), help="gpurender's encoder")
    p.add_argument("--results-dir", type=Path, default=None, metavar="DIR",
                   help="where the results files go (default: benchmarks/results; --quick: a new folder under "
                        "the system's temporary folder)")
    args = p.parse_args(argv)
    q = args.quick
    args.milestone_counts = [int(x) for x in (args.milestones or ("1,2" if q else "1,4,16")).split(",")]
    args.seconds = args.seconds or (2.0 if q else 30.0)
    args.memory_clips = [float(x) for x in (args.memory_seconds or ("3,6" if q else "10,90")).split(",")]
    args.batch_sizes = [int(x) for x in (args.batches or ("1,8,32" if q else "1,8,32,128")).split(",")]
    return args


def results_folder(quick: bool, given: Path | None) -> Path:
    """``given``, else ``benchmarks/results`` for a full run and a new folder under the system's
    temporary folder for a ``--quick`` one (its results are not for the repository); created."""
    if given is None and quick:
        return Path(tempfile.mkdtemp(prefix="gpurender-bench-quick-"))
    folder = given or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_end_to_end(args: argparse.Namespace, tools: list[str], result: dict) -> tuple[list[Run], list[Run]]:
    """The end-to-end cases (each milestone count, then the memory case), both tools side by
    side; -> (end-to-end runs, memory runs). Records the checkpoints used in ``result``."""
    e2e: list[Run] = []
    mem: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="gpurender-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sources, result["checkpoints"], game = source_checkpoints(tmp)
        print(f"\n== end to end ({result['checkpoints']})", flush=True)
        warm = milestone_dir(sources, 1, tmp)
        for tool in [] if args.skip_warmup else tools:  # page cache, bytecode, ROMs: the first case not cold
            run_tool(tool, warm, 1, 0.5, tmp, args, game)
        for n in args.milestone_counts:
            run_dir = milestone_dir(sources, n, tmp)
            pair = {}
            for tool in tools:
                runs = [run_tool(tool, run_dir, n, args.seconds, tmp, args, game) for _ in range(args.repeat)]
                pair[tool] = best_of(runs)
                r = pair[tool]
                print(f"{tool:9s} {n:3d} x {args.seconds:g} s: {r.wall_s:7.1f} s wall, {r.fps:7.1f} fps, "
                      f"{r.realtime:5.2f}x real time, {r.cpu_s:6.1f} CPU s, peak RSS {r.peak_rss_mib:,.0f} MiB",
                      flush=True)
            e2e += pair.values()
            if pair["gpurender"].ok:
                b = pair.get("baseline")
                print(headline(pair["gpurender"], b if b is not None and b.ok else None), flush=True)
        if not args.skip_memory:
            print(f"\n== memory against clip length ({' vs '.join(f'{s:g} s' for s in args.memory_clips)})", flush=True)
            run_dir = milestone_dir(sources, 1, tmp)
            for tool in tools:
                for s in args.memory_clips:
                    r = run_tool(tool, run_dir, 1, s, tmp, args, game)
                    mem.append(r)
                    print(f"{tool:9s} 1 x {s:g} s: peak RSS {r.peak_rss_mib:,.0f} MiB (PSS {r.peak_pss_mib:,.0f})",
                          flush=True)
    return e2e, mem


def add_ratios(result: dict, by: dict[tuple[str, int], Run], args: argparse.Namespace) -> None:
    """gpurender against the baseline at each milestone count, and the headline, into ``result``."""
    info = result["machine"]
    for n in args.milestone_counts:
        if ("gpurender", n) in by and ("baseline", n) in by:
            g, b = by["gpurender", n], by["baseline", n]
            result["ratios"].append({"milestones": n, "gpurender_fps": g.fps, "baseline_fps": b.fps,
                                     "ratio": g.fps / b.fps, "gpurender_cpu_ms": g.cpu_ms_per_frame,
                                     "baseline_cpu_ms": b.cpu_ms_per_frame,
                                     "cpu_bound": ratio_bound(g, b, info["cores"])})
    if result["ratios"]:
        pick = next((x for x in result["ratios"] if x["milestones"] == HEADLINE_MILESTONES), result["ratios"][-1])
        n = pick["milestones"]
        result["headline"] = (f"**{pick['ratio']:.1f}x** the baseline's frames/s at {n} milestones x "
                              f"{args.seconds:g} s ({headline(by['gpurender', n], by['baseline', n])})")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the suite with command-line arguments ``argv`` (default: ``sys.argv[1:]``); ``prog`` names
    the command in ``--help`` and in the report (default: this file). -> the exit status: 0 when
    every end-to-end run rendered all its frames."""
    args = parse_args(argv, prog)
    import socket

    from bench_stages import REPS, Row, print_row, run_stages

    host = re.sub(r"[^A-Za-z0-9_.-]", "_", args.name or socket.gethostname())
    name = f"quick-{host}" if args.quick and not host.startswith("quick-") else host
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine(args.device, args.encoder)
    info["name"] = name
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["renderer"] = renderer_name()
    gpus = ", ".join(info["gpus"]) or "none"
    print(f"{name}: {info['cpu']} ({info['cores']} cores, {info['ram_gib']} GiB), GPU: {gpus}"
          f", OpenGL: {info['renderer']}, encoder: {info['encoder']}, torch on {info['torch_device']}", flush=True)
    command = f"{prog or 'python benchmarks/bench.py'} " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict = {"machine": info, "quick": args.quick, "reps": REPS, "command": command.strip(), "stages": [],
                    "end_to_end": [], "memory": [], "ratios": [], "headline": ""}

    stage_rows: list[Row] = []
    if not args.skip_stages:
        print("\n== stages", flush=True)
        from gpurender.agents import pick_device

        def report(r: Row) -> None:
            stage_rows.append(r)
            print_row(r)

        extra = run_stages(pick_device(args.device), args.batch_sizes, args.quick, report, gym=False)
        info["max_tiles"] = extra["max_tiles"]
        result["stages"] = [asdict(r) for r in stage_rows]

    tools = ["gpurender"] + ([] if args.skip_baseline else ["baseline"])
    e2e, mem = run_end_to_end(args, tools, result)
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["end_to_end"] = [asdict(r) for r in e2e]
    result["memory"] = [asdict(r) for r in mem]
    by = {(r.tool, r.milestones): r for r in e2e if r.ok}
    add_ratios(result, by, args)

    out = results_folder(args.quick, args.results_dir)
    stem = out / name
    write_results(stem, result, markdown(result, stage_rows))
    made = [f"{stem}.md", f"{stem}.json"]
    if e2e and plot(e2e, stem.with_suffix(".png"), f"gpurender vs baseline — {name}, {args.seconds:g} s clips",
                   info["cores"]):
        made.append(f"{stem}.png")
    print("\n" + markdown(result, stage_rows))
    for n in args.milestone_counts:
        if ("gpurender", n) in by:
            print(headline(by["gpurender", n], by.get(("baseline", n))))
    print("wrote " + ", ".join(made))
    return 0 if all(r.ok for r in e2e + mem) else 1


if __name__ == "__main__":
    sys.exit(main())
