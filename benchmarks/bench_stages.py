"""Stage benchmark: env steps/s, inference obs/s, panel packing, drawing, readback and encoding
frames/s, per batch size.

Each case is set up, warmed up, then timed over 5 repetitions; the median is reported. The agent is
an untrained PPO CnnPolicy on Breakout's spaces saved to a temporary folder (same network and
cost as a trained one), so this runs on a fresh clone with no downloads. The frames drawn,
read back and encoded are real panels: 3 s of Breakout played by that agent (with 30 % random
actions so the ball is served and the picture moves), packed by the pipeline's own
``MilestonePanel``.

    python benchmarks/bench_stages.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_stages.py --quick    # smaller batches of work, fewer seconds
    python benchmarks/bench_stages.py --threads 1  # one torch thread (shared or busy cores)

Writes ``benchmarks/results/stages-<machine>.json`` and ``.md`` naming the CPU, core count and
torch device. ``benchmarks/bench.py`` runs the same cases as the first part of its suite.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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
from gpurender.encode import EncodeSettings, VideoWriter, configure_opencv_threads, nvenc_unavailable_reason
from gpurender.envs import make_atari
from gpurender.games import resolve_game
from gpurender.milestones import find_milestones
from gpurender.panel import MilestonePanel
from gpurender.protocol import StepOutputs
from gpurender.render import FrameRenderer, PanelSpec
from gpurender.rollout import Rollout, forward_units

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 8, 32, 128)
GYM_MAX_BATCH = 8
NVENC_MAX_BATCH = 8
"""Consumer NVIDIA cards cap concurrent NVENC sessions (3-8), so larger batches are not tried."""
REPS = 5
UNITS = {"env": "env steps", "agent": "obs"}
"""Unit of ``per_s`` per stage; every other stage counts 960x540 frames."""


@dataclass
class Row:
    """One benchmark case: a stage at one batch size."""

    stage: str
    """env | agent | pack | draw | readback | encode"""
    backend: str
    """envpool | gym (env); torch device (agent); python (pack); GL renderer (draw); yuv | rgb |
    rgb+swscale (readback); codec and preset (encode)."""
    batch: int
    items_per_rep: int
    """Env steps, observations or frames (batch x calls) processed per timed repetition."""
    per_s: float
    """Median env steps/s, observations/s or frames/s."""
    ms_per_call: float
    """Median milliseconds per batched call: one ``step``/``act``/``pack``, one batch drawn or read
    back (in passes of the renderer's tiles), one frame of each of ``batch`` videos encoded."""
    reps_s: list[float]
    """Seconds of each timed repetition."""
    cpu_ms_per_item: float | None = None
    """Median CPU milliseconds per env step, observation or frame: this process's user + system
    time, every thread of it (EnvPool's workers, llvmpipe's rasterisers, the encoder threads), so
    a stage that spreads over several cores costs more CPU than wall."""
    reps_cpu_s: list[float] | None = None
    """CPU seconds of each timed repetition."""


def timed(call: Callable[[], None], calls: int, warmup: int) -> list[tuple[float, float]]:
    """(wall s, CPU s of this process) of each of ``REPS`` repetitions of ``calls`` calls."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(REPS):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(calls):
            call()
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def row(stage: str, backend: str, batch: int, calls: int, reps: list[tuple[float, float]]) -> Row:
    walls, cpus = [w for w, _ in reps], [c for _, c in reps]
    med = statistics.median(walls)
    items = batch * calls
    return Row(stage, backend, batch, items, items / med, 1000 * med / calls, [round(r, 4) for r in walls],
               1000 * statistics.median(cpus) / items, [round(c, 4) for c in cpus])


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


@dataclass
class PanelFrames:
    """A clip of real panel inputs (one env, consecutive steps) and the I420 frames drawn from them."""

    panel: MilestonePanel
    values: np.ndarray
    """(T, n_values) float32, per step."""
    chars: np.ndarray
    """(T, n_slots) uint8, per step."""
    screens: np.ndarray
    """(T, 210, 160, 3) uint8, per step."""
    outputs: list[StepOutputs]
    """The agent's outputs per step (batch 1), for the packing stage."""
    yuv: np.ndarray | None = None
    """(T, 810, 960) uint8, filled by :func:`draw_clip`."""

    @property
    def spec(self) -> PanelSpec:
        return self.panel.spec

    def take(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` consecutive steps from ``start`` (wrapping): values, chars, screens."""
        idx = (start + np.arange(n)) % len(self.values)
        return self.values[idx], self.chars[idx], self.screens[idx]


def play_clip(agent: Agent, checkpoint: Path, renderer: FrameRenderer, steps: int,
              game: str = "Breakout") -> PanelFrames:
    """Play ``steps`` agent steps of one env and pack every panel the way the pipeline does."""
    g = resolve_game(game)
    panel = MilestonePanel(find_milestones([checkpoint])[0], agent.info, g, renderer)
    rollout = Rollout(make_atari(g, [0], "envpool"), forward_units([agent], 1, stack=False), agent.device)
    rng = np.random.default_rng(0)
    values, chars, screens, outputs = [], [], [], []
    for t in range(steps):
        out = panel.unpack(rollout.act())
        v, c = panel.pack(t, steps, out, rollout.scores.current, rollout.state.lives)
        values.append(v[0])
        chars.append(c[0])
        screens.append(rollout.state.screens[0])
        outputs.append(out)
        action = out.actions if rng.random() > 0.3 else rng.integers(0, len(rollout.env.action_names), 1)
        rollout.advance(action)
    rollout.close()
    return PanelFrames(panel, np.stack(values), np.stack(chars), np.stack(screens), outputs)


def _draw_passes(r: FrameRenderer, clip: PanelFrames, start: int, batch: int, game: bool = True) -> Iterator[int]:
    """Draw ``batch`` frames in passes of ``r.max_tiles``; yields each pass's frame count after
    drawing it (the caller reads back, or not, before the next pass clears the target).
    ``game=False``: the panel half only, as the pipeline draws on a software renderer."""
    values, chars, screens = clip.take(start, batch)
    for p0 in range(0, batch, r.max_tiles):
        n = min(r.max_tiles, batch - p0)
        r.begin(n, game=game)
        r.draw(clip.spec, values[p0 : p0 + n], chars[p0 : p0 + n], screens[p0 : p0 + n] if game else None)
        yield n


def draw_clip(r: FrameRenderer, clip: PanelFrames) -> np.ndarray:
    """Every step of the clip drawn and read back as I420 (the encode stage's input)."""
    out = []
    for n in _draw_passes(r, clip, 0, len(clip.values)):
        out.append(r.read_yuv(n).copy())
    clip.yuv = np.concatenate(out)
    return clip.yuv


def bench_pack(clip: PanelFrames, batch: int, target: int) -> Row:
    """``MilestonePanel.pack``: the per-frame text and value packing done in Python on the main thread."""
    outs = clip.outputs
    per_field = zip(*outs, strict=True)  # each field's per-step arrays
    batched = StepOutputs(*(None if f[0] is None else np.concatenate([f[i % len(f)] for i in range(batch)])
                            for f in per_field))
    scores, lives = np.zeros(batch), np.full(batch, 5)
    t = 0

    def pack() -> None:
        nonlocal t
        clip.panel.pack(t, 2700, batched, scores, lives)
        t += 1

    calls = max(3, target // batch)
    return row("pack", "python", batch, calls, timed(pack, calls, warmup=2))


def bench_draw(r: FrameRenderer, clip: PanelFrames, batch: int, target: int, game: bool = True) -> Row:
    """Clear + the instanced draw calls per pass, finished (``glFinish``) before the next pass;
    ``game=False``: the panel half only (the pipeline on a software renderer)."""
    start = 0

    def draw() -> None:
        nonlocal start
        for _ in _draw_passes(r, clip, start, batch, game):
            r.ctx.finish()
        start += batch

    calls = max(1, target // batch)
    backend = short_renderer(r.renderer) + ("" if game else " panel")
    return row("draw", backend, batch, calls, timed(draw, calls, warmup=2))


def bench_readback(r: FrameRenderer, clip: PanelFrames, kind: str, batch: int, target: int) -> Row:
    """Only the read is timed: ``yuv`` = GPU I420 pass + 1.5 B/pixel read (what the pipeline does);
    ``rgb`` = 3 B/pixel read; ``rgb+swscale`` = RGB read then PyAV's RGB->I420 on the CPU;
    ``panel+opencv`` = the panel half read as RGBA, then OpenCV converts it and scales the game
    in (what the pipeline does on a software renderer, there on the encoder threads)."""
    import av

    from gpurender.encode import I420Converter

    conv = I420Converter()
    screens = clip.take(0, r.max_tiles)[2]

    def read(n: int) -> None:
        if kind == "yuv":
            r.read_yuv(n)
        elif kind == "panel+opencv":
            for i, panel in enumerate(r.read_panels(n)):
                conv.compose(panel, screens[i % len(screens)])
        elif kind == "rgb":
            r.read_rgb(n)
        else:
            for rgb in r.read_rgb(n):
                av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")

    calls = max(1, target // batch)
    reps = []
    for rep in range(REPS + 1):  # the first is the warm-up
        spent = cpu = 0.0
        for c in range(calls):
            for n in _draw_passes(r, clip, (rep * calls + c) * batch, batch):
                r.ctx.finish()
                t0, c0 = time.perf_counter(), time.process_time()
                read(n)
                spent += time.perf_counter() - t0
                cpu += time.process_time() - c0
        reps.append((spent, cpu))
    return row("readback", kind, batch, calls, reps[1:])


def bench_encode(clip: PanelFrames, codec: str, settings: EncodeSettings, batch: int, target: int,
                 folder: Path) -> Row:
    """``batch`` videos encoded in parallel, one ``VideoWriter`` (one codec thread) per video on its
    own thread, as the pipeline's ``EncoderThread``s do. Each video plays the clip forwards then
    backwards (no scene cuts, like a real video)."""
    assert clip.yuv is not None
    frames = np.concatenate([clip.yuv, clip.yuv[::-1]])
    writers = [VideoWriter(folder / f"{codec}_{batch}_{i}.mp4", codec, settings) for i in range(batch)]
    per_video = max(2, target // batch)

    def encode_some(w: VideoWriter) -> None:
        for _ in range(per_video):
            w.write(frames[w.frames % len(frames)])

    try:
        with ThreadPoolExecutor(batch) as pool:
            def step() -> None:
                list(pool.map(encode_some, writers))

            reps = timed(step, 1, warmup=1)
    finally:
        for w in writers:
            w.abort()
    label = f"{codec} {settings.preset}" if codec == "libx264" else codec
    return row("encode", label, batch, per_video, reps)


def short_renderer(name: str) -> str:
    """``llvmpipe (LLVM 15.0.6, 256 bits) (4.5 ...)`` -> ``llvmpipe``; ``NVIDIA H100/PCIe/SSE2`` -> ``NVIDIA H100``."""
    return name.split(" (")[0].split("/")[0]


@contextmanager
def stage_setup(device: torch.device, quick: bool) -> Iterator[tuple[Agent, FrameRenderer, PanelFrames]]:
    """Agent (untrained PPO on Breakout), renderer and a played clip, released afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), "pct_50.zip")
        agent = Agent(ckpt, device=device)
        with FrameRenderer() as r:
            clip = play_clip(agent, ckpt, r, 48 if quick else 90)
            draw_clip(r, clip)
            yield agent, r, clip


def run_stages(device: torch.device, batches: list[int], quick: bool, report: Callable[[Row], None],
               gym: bool = True) -> dict:
    """Every stage at every batch size; ``report`` gets each row as it is measured. -> context
    (renderer name, encoders) for the results header. OpenCV runs as in a render (its thread
    pool off)."""
    configure_opencv_threads()
    env_target, agent_target, frame_target = (200, 64, 32) if quick else (1000, 384, 128)
    for b in batches:
        report(bench_env("envpool", b, env_target))
    if gym:
        for b in (b for b in batches if b <= GYM_MAX_BATCH):
            report(bench_env("gym", b, env_target))
    settings = EncodeSettings()
    codecs = ["libx264"] + (["h264_nvenc"] if nvenc_unavailable_reason() is None else [])
    with stage_setup(device, quick) as (agent, r, clip), tempfile.TemporaryDirectory() as enc_dir:
        for b in batches:
            report(bench_agent(agent, b, agent_target))
        frame_stages(r, clip, batches, frame_target, report)
        for codec in codecs:
            for b in (b for b in batches if codec == "libx264" or b <= NVENC_MAX_BATCH):
                report(bench_encode(clip, codec, settings, b, 2 * frame_target, Path(enc_dir)))
        return {"renderer": r.renderer, "max_tiles": r.max_tiles, "encoders": codecs,
                "x264_preset": settings.preset, "clip_steps": len(clip.values)}


def frame_stages(r: FrameRenderer, clip: PanelFrames, batches: list[int], target: int,
                 report: Callable[[Row], None]) -> None:
    """Packing, drawing and every readback at every batch size."""
    for b in batches:
        report(bench_pack(clip, b, target))
    for b in batches:
        report(bench_draw(r, clip, b, target))
        if r.software:
            report(bench_draw(r, clip, b, target, game=False))
    for kind in ("yuv", "rgb", "rgb+swscale", "panel+opencv"):
        for b in batches:
            report(bench_readback(r, clip, kind, b, target))


def make_checkpoint(folder: Path, name: str = "ppo_untrained.zip") -> Path:
    """Untrained PPO CnnPolicy on Breakout's observation and action spaces."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    venv = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), 4)
    path = folder / name
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


def stage_table(rows: list[Row]) -> str:
    lines = ["| stage | backend / device | batch | per second | ms per call | CPU ms each |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        unit = UNITS.get(r.stage, "frames")
        cpu = "-" if r.cpu_ms_per_item is None else f"{r.cpu_ms_per_item:.2f}"
        lines.append(f"| {r.stage} | {r.backend} | {r.batch} | {r.per_s:,.0f} {unit} | {r.ms_per_call:.2f} | {cpu} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[Row], info: dict, quick: bool) -> str:
    head = (
        f"# Stage benchmark — {info['name']}\n\n"
        f"- CPU: {info['cpu']} ({info['cores']} cores), torch {info['torch']} "
        f"(threads: {info['torch_threads']}), device `{info['device']}`"
        + (f" ({info['gpu']})" if info.get("gpu") else "") + "\n"
        + (f"- OpenGL: {info['renderer']}, {info['max_tiles']} frames per pass; encoders: "
           f"{', '.join(info['encoders'])}\n" if "renderer" in info else "")
        + f"- load average at start: {info['load_avg_at_start']} · {info['date']} · "
        f"{'--quick' if quick else 'full'} run, median of {REPS} repetitions\n\n"
    )
    return head + stage_table(rows)


def print_row(r: Row) -> None:
    print(f"{r.stage:8s} {r.backend:16s} batch {r.batch:4d}: {r.per_s:10,.0f}/s  {r.ms_per_call:8.2f} ms/call  "
          f"{r.cpu_ms_per_item:6.2f} CPU ms each", flush=True)


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

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    info["name"] = re.sub(r"[^A-Za-z0-9_.-]", "_", args.name or info["host"])
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    rows: list[Row] = []

    def report(r: Row) -> None:
        rows.append(r)
        print_row(r)

    info.update(run_stages(device, args.batches, args.quick, report))
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
