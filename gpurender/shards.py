"""A job split into shards, and the shards run as local pipelines (``--workers N``).

A shard is some milestones and some env indices of each: a whole pipeline of its own (a
simulation process, a GL context, encoder threads). Env ``e`` is seeded ``seed + e`` whichever
shard plays it, so a sharded job writes the same videos as one pipeline. Shards run here as
spawned processes (:func:`render_local`) or as Ray tasks (:mod:`gpurender.cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gpurender.config import RenderConfig
from gpurender.errors import GpurenderError
from gpurender.milestones import Milestone

if TYPE_CHECKING:
    from gpurender.games import Game
    from gpurender.pipeline import RenderCallback, RenderReport

log = logging.getLogger(__name__)

CORES_PER_PIPELINE = 4
"""Cores one pipeline keeps busy when nothing else bounds it (benchmarks/README.md, "Scaling")."""
MEMORY_PER_PIPELINE = 2 << 30
"""Bytes of memory set aside per pipeline by ``--workers auto`` (a 16-milestone pipeline peaks
near 1.5 GiB)."""


class Shard(NamedTuple):
    """Part of a job: env ``e`` of each of ``milestones`` for each ``e`` in ``envs``."""

    index: int
    milestones: tuple[Milestone, ...]
    envs: tuple[int, ...]

    @property
    def videos(self) -> int:
        return len(self.milestones) * len(self.envs)

    def describe(self) -> str:
        """``25%, 50%`` or ``25% (envs 2, 3)``."""
        names = ", ".join(m.display for m in self.milestones)
        return names if self.envs == (0,) else f"{names} (envs {', '.join(map(str, self.envs))})"


def plan_shards(milestones: Sequence[Milestone], envs_per_milestone: int, n: int) -> list[Shard]:
    """Split ``milestones`` x ``envs_per_milestone`` videos (all equally long) into at most ``n``
    shards with as equal a number of videos as the split allows: whole milestones while there
    are at least ``n`` of them, else each milestone's envs divided between shards."""
    n = max(1, min(n, len(milestones) * envs_per_milestone))
    all_envs = tuple(range(envs_per_milestone))
    if len(milestones) >= n:
        groups = np.array_split(np.arange(len(milestones)), n)
        return [Shard(i, tuple(milestones[j] for j in g), all_envs) for i, g in enumerate(groups)]
    shards: list[Shard] = []
    for j, m in enumerate(milestones):
        parts = n // len(milestones) + (j < n % len(milestones))
        for envs in np.array_split(np.arange(envs_per_milestone), parts):
            shards.append(Shard(len(shards), (m,), tuple(int(e) for e in envs)))
    return shards


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use (``CUDA_VISIBLE_DEVICES`` respected), without importing
    torch or creating a CUDA context."""
    try:
        present = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    return min(present, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return MEMORY_PER_PIPELINE


def auto_workers(videos: int, cores: int | None = None, gpus: int | None = None, memory: int | None = None) -> int:
    """``--workers auto``: one pipeline per :data:`CORES_PER_PIPELINE` cores, at least one per
    GPU, no more than memory allows (:data:`MEMORY_PER_PIPELINE`) nor than there are videos.
    Below 2 x :data:`CORES_PER_PIPELINE` cores and without GPUs that is one pipeline: a second
    only competes for the same cores."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    gpus = visible_gpus() if gpus is None else gpus
    memory = _available_memory() if memory is None else memory
    n = max(cores // CORES_PER_PIPELINE, gpus, 1)
    return max(1, min(n, memory // MEMORY_PER_PIPELINE, videos))


def local_workers(cfg: RenderConfig, milestones: Sequence[Milestone]) -> int:
    """How many local pipelines ``cfg`` asks for, for ``milestones``."""
    videos = len(milestones) * cfg.envs_per_milestone
    if cfg.workers == "auto":
        n = auto_workers(videos)
        log.info("--workers auto: %d pipeline(s) for %d video(s) (%d cores, %d GPUs)", n, videos,
                 len(os.sched_getaffinity(0)), visible_gpus())
        return n
    return int(cfg.workers)


def shard_device(cfg: RenderConfig, shard: Shard, gpus: int) -> tuple[RenderConfig, int | None]:
    """Shard ``i``'s config and EGL device on a machine with ``gpus`` GPUs: GPU ``i mod gpus``
    for CUDA (where ``cfg.device`` is auto or cuda) and, with several GPUs, for drawing too."""
    if gpus < 1 or cfg.device not in ("auto", "cuda"):
        return cfg, None
    k = shard.index % gpus
    return replace(cfg, device=f"cuda:{k}"), (k if gpus > 1 else None)


def job_title(game: Game, shards: Sequence[Shard], runners: str) -> str:
    """The progress bar's title: ``Breakout x4 milestones, 2 workers``."""
    milestones = {m.path for s in shards for m in s.milestones}
    return f"{game.name} x{len(milestones)} milestones, {len(shards)} {runners}"


# -- local shards ------------------------------------------------------------------------------


def render_local(cfg: RenderConfig, game: Game, shards: Sequence[Shard], callbacks: Sequence[RenderCallback],
                 t_start: float) -> RenderReport:
    """Run each shard as a pipeline in its own spawned process, writing straight into
    ``cfg.output_dir``; progress goes to ``callbacks`` as one job. -> the merged report, where a
    shard that failed or died has its milestones in ``failures``. On Ctrl-C or SIGTERM every
    shard is stopped and nothing half-written is left."""
    from gpurender.pipeline import RenderReport, _merge
    from gpurender.simulate import _main_module_hidden

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    gpus = visible_gpus()
    for cb in callbacks:
        cb.on_start(sum(s.videos for s in shards) * cfg.frames, job_title(game, shards, "workers"))
    procs: dict[int, mp.Process] = {}
    report = RenderReport([], [])
    results: dict[int, RenderReport | str] = {}
    try:
        for s in shards:
            shard_cfg, gl_device = shard_device(cfg, s, gpus)
            proc = ctx.Process(target=_shard_main, name=f"gpurender-shard-{s.index}", daemon=False,
                               args=(shard_cfg, game.name, s, events, os.getpid(), t_start, gl_device,
                                     logging.getLogger().level))
            with _main_module_hidden():
                proc.start()
            procs[s.index] = proc
        while len(results) < len(shards):
            _next_event(events, procs, results, callbacks)
    except BaseException:
        _stop(procs, Path(cfg.output_dir), grace=0.0)
        raise
    _stop(procs, Path(cfg.output_dir), grace=10.0)
    for s in shards:
        result = results[s.index]
        if isinstance(result, str):
            report.failures += [(m.path, f"worker {s.index} ({s.describe()}): {result}") for m in s.milestones]
        else:
            _merge(report, result)
    return report


def _next_event(events: mp.Queue, procs: dict[int, mp.Process], results: dict, callbacks: Sequence) -> None:
    """Handle one message from the shards, or notice a shard that died without a word."""
    try:
        kind, index, payload = events.get(timeout=0.5)
    except queue.Empty:
        for index, proc in procs.items():
            if index not in results and not proc.is_alive():
                with contextlib.suppress(queue.Empty):
                    while True:  # what it sent just before it exited
                        _handle(events.get(timeout=0.2), results, callbacks)
                if index not in results:
                    code = proc.exitcode or 0
                    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    results[index] = f"the worker process died ({how}) before its videos were finished"
        return
    _handle((kind, index, payload), results, callbacks)


def _handle(event: tuple, results: dict, callbacks: Sequence) -> None:
    kind, index, payload = event
    if kind == "frames":
        for cb in callbacks:
            cb.on_frames(payload)
    else:  # "done": its report, or "failed": a one-line reason
        results[index] = payload


def _stop(procs: dict[int, mp.Process], output_dir: Path, grace: float) -> None:
    """Wait ``grace`` seconds for the shards to exit, stop those still running (SIGTERM, then
    SIGKILL after 10 s) and remove what a killed one left half-written."""
    from gpurender.outputs import remove_partials

    deadline = time.monotonic() + grace
    for proc in procs.values():
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    for proc in procs.values():
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
        if proc.exitcode != 0:
            for p in remove_partials(output_dir, proc.pid):
                log.info("removed %s, left by worker %s", p.name, proc.name)


class _QueueProgress:
    """A shard's :class:`~gpurender.pipeline.RenderCallback`: frame counts to the parent's queue,
    at most every 0.2 s."""

    def __init__(self, events: mp.Queue, index: int) -> None:
        self.events, self.index, self.pending, self.sent = events, index, 0, time.monotonic()

    def on_start(self, total_frames: int, title: str) -> None:
        pass

    def on_frames(self, frames: int) -> None:
        self.pending += frames
        if time.monotonic() - self.sent > 0.2:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.events.put(("frames", self.index, self.pending))
            self.pending, self.sent = 0, time.monotonic()

    def on_end(self, report: RenderReport) -> None:
        self.flush()


def _shard_main(cfg: RenderConfig, game_name: str, shard: Shard, events: mp.Queue, parent: int, t_start: float,
                gl_device: int | None, log_level: int) -> None:
    """A shard's process: render it, then put ``("done", index, report)`` (or ``("failed",
    index, reason)``) on ``events``. Dies with its parent; SIGTERM and SIGINT unwind the render
    (its partial files are removed)."""
    from gpurender.cli import sigterm_as_interrupt
    from gpurender.encode import configure_opencv_threads
    from gpurender.games import resolve_game
    from gpurender.pipeline import render_shard
    from gpurender.simulate import _die_with_parent

    _die_with_parent(parent)
    logging.basicConfig(level=log_level, format=f"gpurender[worker {shard.index}]: %(message)s")
    if gl_device is not None:
        os.environ["GLCONTEXT_DEVICE_INDEX"] = str(gl_device)  # the EGL device glcontext opens
    configure_opencv_threads()
    progress = _QueueProgress(events, shard.index)
    try:
        with sigterm_as_interrupt():
            report = render_shard(cfg, resolve_game(game_name), shard, [progress], t_start=t_start)
        progress.flush()
        events.put(("done", shard.index, report))
    except KeyboardInterrupt:
        os._exit(130)  # the parent is stopping the job; its queue may be gone
    except GpurenderError as exc:
        events.put(("failed", shard.index, str(exc)))
    except BaseException as exc:
        log.error("worker %d failed:\n%s", shard.index, traceback.format_exc())
        events.put(("failed", shard.index, f"{type(exc).__name__}: {exc}"))
    events.close()
    events.join_thread()


__all__ = [
    "Shard",
    "auto_workers",
    "job_title",
    "local_workers",
    "plan_shards",
    "render_local",
    "shard_device",
    "visible_gpus",
]
