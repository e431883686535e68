"""The render loop: checkpoints -> batched Atari + batched inference -> shader-drawn frames ->
H.264. Stages overlap: a simulation *process* (:mod:`gpurender.simulate`) steps the envs and runs
the models for step t+1 while the main process (which owns the GL context) draws step t and
encoder threads compress step t-1. A process, not a thread: ModernGL holds the GIL while the
driver renders and reads back, which on llvmpipe is most of a frame, and would stall a
simulation thread. What crosses between them is :mod:`gpurender.protocol`'s typed messages."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gpurender.config import RenderConfig
from gpurender.encode import EncoderThread, EncodeSettings, VideoWriter, choose_encoder, configure_opencv_threads
from gpurender.errors import GpurenderError
from gpurender.games import Game, action_meanings, resolve_game
from gpurender.milestones import Milestone, find_milestones
from gpurender.network import AgentInfo
from gpurender.outputs import MilestoneLocks, remove_dead_writers_partials
from gpurender.panel import MilestonePanel
from gpurender.protocol import Done, Step
from gpurender.render import FrameRenderer
from gpurender.sidecar import sha256, stale_reason, video_settings, write_sidecar
from gpurender.simulate import SimulationProcess
from gpurender.trace import TraceWriter, trace_path

if TYPE_CHECKING:
    from gpurender.shards import Shard

log = logging.getLogger(__name__)


@dataclass
class VideoResult:
    """One finished (or skipped) video."""

    milestone: Milestone
    env_index: int
    path: Path
    frames: int = 0
    episode_returns: list[float] = field(default_factory=list)
    """Scores of the games finished during the clip."""
    unfinished_score: float = 0.0
    """Score of the game still running at the end of the clip."""
    skipped: bool = False
    """It existed, made with the same checkpoint and settings, and was kept; or another process
    is rendering it (:attr:`busy_pid`)."""
    busy_pid: int | None = None
    """Skipped because this live process holds its lock (0: a process whose id is unknown)."""
    trace: Path | None = None
    """Its ``--trace`` file, when one was written."""
    agent: AgentInfo | None = None
    checkpoint_sha256: str = ""


@dataclass
class RenderReport:
    """What a render job did."""

    videos: list[VideoResult]
    failures: list[tuple[Path, str]]
    wall_seconds: float = 0.0
    frames: int = 0
    encoder: str = ""
    renderer: str = ""
    device: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    forwards_per_step: int = 0
    """Model forwards launched per env step: one per milestone, or fewer where milestones of one
    architecture share a stacked forward (:class:`gpurender.agents.AgentStack`)."""
    first_frame_seconds: float | None = None
    """From the start of :func:`render` to the first frames drawn (checkpoints loaded, envs made,
    GL context and encoders open): the job's start-up."""

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0


class RenderCallback:
    """Hooks into :func:`render`; override what you need. Called on the rendering thread."""

    def on_start(self, total_frames: int, title: str) -> None:
        """Rendering starts: ``total_frames`` frames (all videos) will be drawn."""

    def on_frames(self, frames: int) -> None:
        """``frames`` more frames were drawn and handed to the encoders."""

    def on_end(self, report: RenderReport) -> None:
        """The job is over (also after a failure or Ctrl-C, with what was finished)."""


class ProgressBar(RenderCallback):
    """A tqdm progress bar over every video's frames."""

    def __init__(self) -> None:
        self.bar = None

    def on_start(self, total_frames: int, title: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_frames, unit="frame", desc=title, dynamic_ncols=True)

    def on_frames(self, frames: int) -> None:
        if self.bar is not None:
            self.bar.update(frames)

    def on_end(self, report: RenderReport) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def video_path(output_dir: Path, m: Milestone, env_index: int, envs_per_milestone: int) -> Path:
    name = m.video_name
    if envs_per_milestone > 1:
        name = name.replace("_analytics.mp4", f"_env{env_index}_analytics.mp4")
    return output_dir / name


def _check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".gpurender-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GpurenderError(f"output folder {path} is not writable ({exc.strerror or exc})") from None


class _Digests(dict[Path, str]):
    """Each checkpoint's sha256, read once per job."""

    def __missing__(self, path: Path) -> str:
        self[path] = sha256(path)
        return self[path]


def _plan(cfg: RenderConfig, game: Game, milestones: list[Milestone], output_dir: Path,
          digests: _Digests) -> tuple[list[Milestone], list[VideoResult]]:
    """-> (milestones to render, videos kept). A milestone is rendered unless every one of its
    videos exists with a sidecar that matches this run (or always with ``force``)."""
    todo, kept = [], []
    for m in milestones:
        paths = [video_path(output_dir, m, e, cfg.envs_per_milestone) for e in range(cfg.envs_per_milestone)]
        if cfg.force or not all(p.exists() for p in paths):
            todo.append(m)
            continue
        digest = digests[m.path]
        reasons = [stale_reason(p, video_settings(cfg, game.name, e, digest), cfg.trace) for e, p in enumerate(paths)]
        stale = [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
        if stale:
            log.warning("re-rendering %s: %s", stale[0][0].name, stale[0][1])
            todo.append(m)
        else:
            kept += [VideoResult(m, e, p, skipped=True, checkpoint_sha256=digest,
                                 trace=trace_path(p) if trace_path(p).exists() else None)
                     for e, p in enumerate(paths)]
    return todo, kept


def render(cfg: RenderConfig, callbacks: Sequence[RenderCallback] = (), *, progress: bool = True) -> RenderReport:
    """Render one video per milestone (x envs per milestone) as ``cfg`` says, with a sidecar
    (and a trace, with ``cfg.trace``) beside each; -> the job's report.

    The job runs in this process, in ``cfg.workers`` local shards (:mod:`gpurender.shards`) or
    as tasks on a Ray cluster (``cfg.ray_address``, :mod:`gpurender.cluster`); the report is one
    for the whole job either way. Milestones another live process is rendering into the same
    folder are skipped (``VideoResult.busy_pid``), never written twice.

    ``callbacks`` follow the job (:class:`RenderCallback`); ``progress`` adds a
    :class:`ProgressBar`. Milestones whose checkpoint fails to load, or whose shard failed, are
    in ``report.failures`` while the others render. Raises
    :class:`~gpurender.errors.GpurenderError` for bad input and ``KeyboardInterrupt`` on Ctrl-C;
    unfinished videos are removed, finished ones (and their sidecars) kept. Switches OpenCV's
    thread pool off in this process (:func:`~gpurender.encode.configure_opencv_threads`)."""
    t_start = time.perf_counter()
    configure_opencv_threads()
    callbacks = [*callbacks, *([ProgressBar()] if progress else [])]
    game = resolve_game(cfg.game)
    milestones = find_milestones(cfg.model_dir, cfg.milestones)
    output_dir = Path(cfg.output_dir)
    _check_output_dir(output_dir)
    digests = _Digests()
    report = RenderReport([], [])
    try:
        for leftover in remove_dead_writers_partials(output_dir):
            log.info("removed %s, left by a render that was killed", leftover.name)
        with MilestoneLocks(output_dir) as locks:
            busy = locks.acquire_all(m.video_name for m in milestones)
            mine = [m for m in milestones if m.video_name not in busy]
            todo, report.videos = _plan(cfg, game, mine, output_dir, digests)
            if busy:
                log.warning("skipping %s: another process (%s) is rendering into %s",
                            ", ".join(m.display for m in milestones if m.video_name in busy),
                            ", ".join(sorted({str(pid or "?") for pid in busy.values()})), output_dir)
            report.videos += [VideoResult(m, e, video_path(output_dir, m, e, cfg.envs_per_milestone), skipped=True,
                                          busy_pid=busy[m.video_name])
                              for m in milestones if m.video_name in busy for e in range(cfg.envs_per_milestone)]
            if todo:
                _merge(report, _execute(cfg, game, todo, callbacks, t_start, digests))
            else:
                report.encoder, _ = choose_encoder(cfg.encoder)
    finally:
        report.wall_seconds = time.perf_counter() - t_start
        for cb in callbacks:
            cb.on_end(report)
    return report


def _execute(cfg: RenderConfig, game: Game, todo: list[Milestone], callbacks: Sequence[RenderCallback],
             t_start: float, digests: _Digests) -> RenderReport:
    """Render ``todo`` here, in local shards or on Ray, as ``cfg`` says."""
    from gpurender import shards

    if cfg.ray_address is not None:
        from gpurender.cluster import render_on_ray

        return render_on_ray(cfg, game, todo, callbacks, digests)
    plan = shards.plan_shards(todo, cfg.envs_per_milestone, shards.local_workers(cfg, todo))
    if len(plan) > 1:
        return shards.render_local(cfg, game, plan, callbacks, t_start)
    return render_shard(cfg, game, plan[0], callbacks, t_start=t_start, digests=digests)


def _merge(report: RenderReport, part: RenderReport) -> None:
    """Add ``part`` (one shard's or several shards' report) to ``report``."""
    report.videos += part.videos
    report.failures += part.failures
    report.frames += part.frames
    report.forwards_per_step += part.forwards_per_step
    for k, v in part.stage_seconds.items():
        report.stage_seconds[k] = report.stage_seconds.get(k, 0.0) + v
    for name in ("encoder", "renderer", "device"):
        mine, theirs = getattr(report, name), getattr(part, name)
        if theirs and theirs not in mine.split("; "):
            setattr(report, name, f"{mine}; {theirs}" if mine else theirs)
    if part.first_frame_seconds is not None:
        report.first_frame_seconds = min(report.first_frame_seconds or math.inf, part.first_frame_seconds)


def render_shard(cfg: RenderConfig, game: Game, shard: Shard, callbacks: Sequence[RenderCallback] = (), *,
                 t_start: float | None = None, digests: _Digests | None = None, sidecars: bool = True) -> RenderReport:
    """One pipeline: render ``shard`` (its milestones, its envs of each) in this process and its
    simulation child, writing each video (and with ``sidecars``, its sidecar) into
    ``cfg.output_dir``; -> its report. ``t_start``: when the job started
    (``time.perf_counter``, which is system-wide on Linux), for ``first_frame_seconds``."""
    t_start = time.perf_counter() if t_start is None else t_start
    output_dir = Path(cfg.output_dir)
    report = RenderReport([], [])
    # start the simulation first: it imports torch and loads the checkpoints while this process
    # opens the GL context and the encoders
    sim = SimulationProcess(cfg, game, list(shard.milestones), shard.envs)
    try:
        report.encoder, _ = choose_encoder(cfg.encoder)
        with FrameRenderer(max_tiles=cfg.max_tiles) as renderer:
            loaded = sim.loaded()
            report.failures, report.device = loaded.failures, loaded.device
            report.forwards_per_step, report.renderer = loaded.forwards_per_step, renderer.renderer
            if loaded.agents:
                job = _Job(cfg, game, loaded.agents, shard.envs, report.encoder, output_dir, sim, renderer, callbacks)
                try:
                    job.run()
                finally:
                    job.close()
                    report.videos += job.finished
                    report.frames = job.frames_done
                    report.stage_seconds = job.stage_seconds
                    if job.first_frame_time is not None:
                        report.first_frame_seconds = job.first_frame_time - t_start
    finally:
        sim.close()
        report.wall_seconds = time.perf_counter() - t_start
        if sidecars:  # of the videos that finished, whatever ended the job
            write_sidecars(cfg, game, report, digests if digests is not None else _Digests())
    return report


def write_sidecars(cfg: RenderConfig, game: Game, report: RenderReport, digests: _Digests) -> None:
    """One sidecar per video rendered by this job (not the skipped ones), from its report."""
    for v in report.videos:
        if v.skipped:
            continue
        v.checkpoint_sha256 = digests[v.milestone.path]
        meta = {
            "video": v.path.name,
            "checkpoint": str(v.milestone.path.resolve()),
            "milestone": v.milestone.label,
            "algorithm": v.agent.algo,
            **video_settings(cfg, game.name, v.env_index, v.checkpoint_sha256),
            "episode_returns": v.episode_returns,
            "unfinished_episode_score": v.unfinished_score,
            "render_fps": round(report.fps, 1),
            "encoder": report.encoder,
            "renderer": report.renderer,
            "device": report.device,
            "action_names": list(action_meanings(game)),
            "layers": [{"name": x.name, "shape": list(x.shape), "nodes": x.nodes} for x in v.agent.layers],
            "trace": v.trace.name if v.trace is not None else None,
        }
        write_sidecar(v.path, meta)


class _Tile(NamedTuple):
    """One frame to draw: which env's video it goes to, and what it shows."""

    env: int
    panel: MilestonePanel
    values: np.ndarray
    chars: np.ndarray
    screen: np.ndarray


class _Job:
    """One batched render of several milestones: draws what the simulation process sends and
    hands the frames to one encoder thread per video."""

    def __init__(self, cfg: RenderConfig, game: Game, loaded: list[tuple[Milestone, AgentInfo]],
                 envs: Sequence[int], codec: str, output_dir: Path, sim: SimulationProcess, renderer: FrameRenderer,
                 callbacks: Sequence[RenderCallback]) -> None:
        self.cfg, self.game, self.sim, self.renderer, self.callbacks = cfg, game, sim, renderer, callbacks
        e_per = len(envs)
        self.n_envs = len(loaded) * e_per
        self.frames_done = 0
        # simulation process: infer, env, sim_blocked (pipe full: drawing is slower); main process:
        # pack, gl (draw + convert + read back), encode_wait (encoder queues full), draw_starved
        self.stage_seconds = dict.fromkeys(
            ("infer", "env", "sim_blocked", "pack", "gl", "encode_wait", "draw_starved"), 0.0)
        self.panels = [MilestonePanel(m, info, game, renderer) for m, info in loaded]
        self.rows = [slice(i * e_per, (i + 1) * e_per) for i in range(len(loaded))]
        # frames are drawn grouped by layout so each group is one run of tiles
        self.layout_rank = {p.spec.layout_key: k for k, p in reversed(list(enumerate(self.panels)))}
        settings = EncodeSettings(fps=cfg.fps, crf=cfg.crf, preset=cfg.preset)
        self.videos: list[VideoResult] = []  # in env order
        self.encoders: list[EncoderThread] = []
        self.traces: list[TraceWriter] = []
        self.finished: list[VideoResult] = []
        self.first_frame_time: float | None = None
        try:
            for m, info in loaded:
                for env in envs:
                    path = video_path(output_dir, m, env, cfg.envs_per_milestone)
                    self.videos.append(VideoResult(m, env, path, agent=info))
                    self.encoders.append(EncoderThread(VideoWriter(path, codec, settings)))
                    if cfg.trace:
                        self.traces.append(TraceWriter(path))
        except BaseException:
            self.close()
            raise

    def _draw_steps(self, steps: list[Step]) -> None:
        """Draw and hand to the encoders every env's frame of ``steps`` (consecutive), as few
        passes of the renderer's tiles as possible: a pass costs a fixed overhead on llvmpipe."""
        r = self.renderer
        t0 = time.perf_counter()
        per_tile: list[_Tile] = []  # in drawing order
        for d in steps:
            for panel, rows in zip(self.panels, self.rows, strict=True):
                out = panel.unpack(d.outputs[rows])
                values, chars = panel.pack(d.t, self.cfg.frames, out, d.scores[rows], d.lives[rows])
                envs = range(rows.start, rows.stop)
                per_tile += [_Tile(e, panel, values[k], chars[k], d.screens[e]) for k, e in enumerate(envs)]
                if self.traces:
                    for k, e in enumerate(envs):
                        self.traces[e].write(d.t, out, k, d.rewards[e], d.scores[e], d.lives[e])
        # tiles of one layout side by side (one draw call per item kind); steps stay in order
        # within each env, which is all the encoders need
        per_tile.sort(key=lambda c: self.layout_rank[c.panel.spec.layout_key])
        self.stage_seconds["pack"] += time.perf_counter() - t0
        for start in range(0, len(per_tile), r.max_tiles):
            chunk = per_tile[start : start + r.max_tiles]
            t0 = time.perf_counter()
            r.begin(len(chunk), game=not r.software)
            tile0 = 0
            for _, group in itertools.groupby(chunk, key=lambda c: c.panel.spec.layout_key):
                seg = list(group)
                r.draw(seg[0].panel.spec, np.stack([c.values for c in seg]), np.stack([c.chars for c in seg]),
                       None if r.software else np.stack([c.screen for c in seg]), tile0=tile0)
                tile0 += len(seg)
            # a GPU converts whole frames to I420; on a software renderer sampling textures is the
            # costly part, so the encoder threads convert the panel and scale the game in (OpenCV)
            frames = r.read_panels(len(chunk)) if r.software else r.read_yuv(len(chunk))
            self.stage_seconds["gl"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for tile, c in enumerate(chunk):
                self.encoders[c.env].submit((frames[tile], c.screen) if r.software else frames[tile])
            self.stage_seconds["encode_wait"] += time.perf_counter() - t0

    def run(self) -> None:
        """Draw every step the simulation sends, then finish every video (renamed into place)."""
        for cb in self.callbacks:
            cb.on_start(self.cfg.frames * self.n_envs, f"{self.game.name} x{len(self.panels)} milestones")
        steps_per_pass = max(1, self.renderer.max_tiles // self.n_envs)
        pending: list[Step] = []

        def flush() -> None:
            self._draw_steps(pending)
            if self.first_frame_time is None:
                self.first_frame_time = time.perf_counter()
            self.frames_done += self.n_envs * len(pending)
            for cb in self.callbacks:
                cb.on_frames(self.n_envs * len(pending))
            pending.clear()

        while True:
            t0 = time.perf_counter()
            msg = self.sim.get()  # a step's screens come copied out of the shared ring
            self.stage_seconds["draw_starved"] += time.perf_counter() - t0
            if isinstance(msg, Done):
                break
            pending.append(msg)
            if len(pending) == steps_per_pass:
                flush()
        if pending:
            flush()
        self.stage_seconds.update(msg.stage_seconds)
        for e, (video, enc) in enumerate(zip(self.videos, self.encoders, strict=True)):
            enc.finish()
            if self.traces:
                self.traces[e].close()
                video.trace = self.traces[e].path
            video.frames = self.cfg.frames
            video.episode_returns = list(msg.returns[e])
            video.unfinished_score = float(msg.final_scores[e])
            self.finished.append(video)

    def close(self) -> None:
        """Abort every video that did not finish (its partial files are deleted)."""
        done = {id(v) for v in self.finished}
        for e, video in enumerate(self.videos):
            if id(video) in done:
                continue
            if e < len(self.encoders):
                self.encoders[e].abort()
            if e < len(self.traces):
                self.traces[e].abort()
