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
from dataclasses import dataclass, field, replace
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
from gpurender.progress import ProgressPlan, ProgressResult, ProgressVideo, plan_progress, write_progress_sidecar
from gpurender.protocol import Done, Step
from gpurender.render import FrameRenderer
from gpurender.render.layout import hud_text
from gpurender.sidecar import sha256, stale_reason, video_settings, write_sidecar
from gpurender.simulate import SimulationProcess, play_phases
from gpurender.trace import TraceWriter, trace_path

if TYPE_CHECKING:
    from collections.abc import Collection

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
    progress: ProgressResult | None = None
    """The progress video, when the job asked for one (``cfg.progress_video``)."""

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

    With ``cfg.progress_video`` it also writes the progress video of the milestones
    (:mod:`gpurender.progress`; ``report.progress``), in one pipeline that plays every milestone
    it shows, drawing frames only for the videos it writes (``cfg.milestone_videos=False``: the
    progress video alone).

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
            todo = (_plan_videos(cfg, game, milestones, output_dir, digests, locks, report)
                    if cfg.milestone_videos else [])
            plan = plan_progress(cfg, game, milestones, output_dir, digests, locks) if cfg.progress_video else None
            if isinstance(plan, ProgressPlan):
                _merge(report, _execute_progress(cfg, game, milestones, todo, plan, callbacks, t_start, digests))
            else:
                report.progress = plan  # kept, another process's, or not asked for
                if todo:  # (no progress video to play the milestones for: they need not play in turn)
                    _merge(report, _execute(replace(cfg, progress_video=False), game, todo, callbacks, t_start,
                                            digests))
                else:
                    report.encoder, _ = choose_encoder(cfg.encoder)
    finally:
        report.wall_seconds = time.perf_counter() - t_start
        for cb in callbacks:
            cb.on_end(report)
    return report


def _plan_videos(cfg: RenderConfig, game: Game, milestones: list[Milestone], output_dir: Path, digests: _Digests,
                 locks: MilestoneLocks, report: RenderReport) -> list[Milestone]:
    """Lock the milestones' videos and plan them (:func:`_plan`); -> the milestones to render.
    The videos kept, and those another process is rendering, go into ``report.videos``."""
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
    return todo


def _execute_progress(cfg: RenderConfig, game: Game, milestones: list[Milestone], todo: list[Milestone],
                      plan: ProgressPlan, callbacks: Sequence[RenderCallback], t_start: float,
                      digests: _Digests) -> RenderReport:
    """The progress video and the milestone videos of ``todo`` in one pipeline here: every
    milestone either needs is played, frames are drawn for the videos written."""
    from gpurender.shards import Shard

    wanted = set(todo) | set(plan.shown)
    played = tuple(m for m in milestones if m in wanted)
    return render_shard(cfg, game, Shard(0, played, tuple(range(cfg.envs_per_milestone))), callbacks,
                        t_start=t_start, digests=digests, write=frozenset(todo), progress=plan)


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
    if part.progress is not None:
        report.progress = part.progress


def render_shard(cfg: RenderConfig, game: Game, shard: Shard, callbacks: Sequence[RenderCallback] = (), *,
                 t_start: float | None = None, digests: _Digests | None = None, sidecars: bool = True,
                 write: Collection[Milestone] | None = None, progress: ProgressPlan | None = None) -> RenderReport:
    """One pipeline: render ``shard`` (its milestones, its envs of each) in this process and its
    simulation child, writing each video (and with ``sidecars``, its sidecar) into
    ``cfg.output_dir``; -> its report. ``t_start``: when the job started
    (``time.perf_counter``, which is system-wide on Linux), for ``first_frame_seconds``.
    ``write``: the milestones whose videos are written (all when None); ``progress``: the
    progress video to write from the frames of the milestones it shows."""
    t_start = time.perf_counter() if t_start is None else t_start
    digests = digests if digests is not None else _Digests()
    report = RenderReport([], [])
    # start the simulation first: it imports torch and loads the checkpoints while this process
    # opens the GL context and the encoders
    sim = SimulationProcess(cfg, game, list(shard.milestones), shard.envs)
    agents: dict[Milestone, AgentInfo] = {}
    try:
        report.encoder, _ = choose_encoder(cfg.encoder)
        with FrameRenderer(max_tiles=cfg.max_tiles) as renderer:
            loaded = sim.loaded()
            report.failures, report.device = loaded.failures, loaded.device
            report.forwards_per_step, report.renderer = loaded.forwards_per_step, renderer.renderer
            agents = dict(loaded.agents)
            if loaded.agents:
                _run_job(cfg, game, loaded.agents, shard.envs, report, sim, renderer, callbacks, t_start,
                         write=write, progress=progress)
    finally:
        sim.close()
        report.wall_seconds = time.perf_counter() - t_start
        if sidecars:  # of the videos that finished, whatever ended the job
            write_sidecars(cfg, game, report, digests)
            if report.progress is not None and not report.progress.skipped:
                write_progress_sidecar(cfg, game, report.progress, digests, agents, _made_by(report))
    return report


def _run_job(cfg: RenderConfig, game: Game, loaded: list[tuple[Milestone, AgentInfo]], envs: Sequence[int],
             report: RenderReport, sim: SimulationProcess, renderer: FrameRenderer,
             callbacks: Sequence[RenderCallback], t_start: float, *, write: Collection[Milestone] | None,
             progress: ProgressPlan | None) -> None:
    """Draw and encode what ``sim`` plays (a :class:`_Job`), filling ``report`` with what finished."""
    agents = dict(loaded)
    video = None
    if progress is not None and any(m in agents for m in progress.shown):
        video = ProgressVideo(cfg, game, renderer, progress, agents, report.encoder)
    try:
        job = _Job(cfg, game, loaded, envs, report.encoder, Path(cfg.output_dir), sim, renderer, callbacks,
                   write=write, progress=video)
        try:
            job.run()
        finally:
            job.close()
            report.videos += job.finished
            report.frames = job.frames_done
            report.stage_seconds = job.stage_seconds
            report.progress = video.result if video is not None else None
            if job.first_frame_time is not None:
                report.first_frame_seconds = job.first_frame_time - t_start
    finally:
        if video is not None:
            video.close()


def _made_by(report: RenderReport) -> dict[str, object]:
    """The sidecar keys that say how a job rendered."""
    return {"render_fps": round(report.fps, 1), "encoder": report.encoder, "renderer": report.renderer,
            "device": report.device}


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
            **_made_by(report),
            "action_names": list(action_meanings(game)),
            "layers": [{"name": x.name, "shape": list(x.shape), "nodes": x.nodes} for x in v.agent.layers],
            "trace": v.trace.name if v.trace is not None else None,
        }
        write_sidecar(v.path, meta)


class _Tile(NamedTuple):
    """One frame to draw: which env's video it goes to, and what it shows."""

    env: int
    """The env's index in the job: milestone ``i``'s env ``k`` is ``i x envs per milestone + k``."""
    panel: MilestonePanel
    values: np.ndarray
    chars: np.ndarray
    screen: np.ndarray
    step: int = 0
    """Its step among those drawn together."""
    cell: int | None = None
    """The progress video's caption cell it is shown in; None: not shown there."""
    score: float = 0.0
    """The game's score so far (a progress caption's live score)."""
    saliency: np.ndarray | None = None
    """(2, 84, 84) actor and critic maps in [0, 1] drawn over its game (``--saliency``)."""


def _passes(per_step: Sequence[tuple[list[_Tile], list[_Tile]]], max_tiles: int) -> list[list[_Tile]]:
    """Tiles (each step's shown and other tiles, steps in order) -> passes of at most
    ``max_tiles``, the shown tiles of a step always in one pass (the progress video composes its
    frame from them); steps stay in order within each env."""
    passes: list[list[_Tile]] = [[]]
    for shown, others in per_step:
        if len(passes[-1]) + len(shown) > max_tiles:
            passes.append([])
        passes[-1] += shown
        for tile in others:
            if len(passes[-1]) == max_tiles:
                passes.append([])
            passes[-1].append(tile)
    return [p for p in passes if p]


class _Job:
    """One batched render of several milestones: draws what the simulation process sends, hands
    the frames to one encoder thread per video written and composes the progress video's frames
    from them (:class:`~gpurender.progress.ProgressVideo`)."""

    def __init__(self, cfg: RenderConfig, game: Game, loaded: list[tuple[Milestone, AgentInfo]],
                 envs: Sequence[int], codec: str, output_dir: Path, sim: SimulationProcess, renderer: FrameRenderer,
                 callbacks: Sequence[RenderCallback], *, write: Collection[Milestone] | None = None,
                 progress: ProgressVideo | None = None) -> None:
        self.cfg, self.game, self.sim, self.renderer, self.callbacks = cfg, game, sim, renderer, callbacks
        self.progress = progress
        self.progress_done = False
        self.e_per = e_per = len(envs)
        self.n_envs = len(loaded) * e_per
        self.frames_done = 0
        # simulation process: infer, env, sim_blocked (pipe full: drawing is slower); main process:
        # pack, gl (draw + convert + read back), encode_wait (encoder queues full), draw_starved
        self.stage_seconds = dict.fromkeys(
            ("infer", "env", "sim_blocked", "pack", "gl", "encode_wait", "draw_starved"), 0.0)
        self.panels = [MilestonePanel(m, info, game, renderer, cfg.saliency, cfg.network_view, cfg.hud)
                       for m, info in loaded]
        self.hud_since: float | None = None
        """``--hud``: when the first step arrived (its frames/s counts from there)."""
        self.draw_ms: float | None = None
        """``--hud``: GL milliseconds per frame of the latest pass (draw, convert, read back)."""
        self.saliency = cfg.saliency != "off"
        self.phases = play_phases(cfg, len(loaded))
        # frames are drawn grouped by layout so each group is one run of tiles
        self.layout_rank = {p.spec.layout_key: k for k, p in reversed(list(enumerate(self.panels)))}
        settings = EncodeSettings(fps=cfg.fps, crf=cfg.crf, preset=cfg.preset)
        # per env of the job, in env order (None: no video written for it)
        self.videos: list[VideoResult | None] = []
        self.encoders: list[EncoderThread | None] = []
        self.traces: list[TraceWriter | None] = []
        self.returns: list[list[float]] = [[] for _ in range(self.n_envs)]
        self.final_scores = np.zeros(self.n_envs)
        self.finished: list[VideoResult] = []
        self.first_frame_time: float | None = None
        try:
            for m, info in loaded:
                for env in envs:
                    if write is not None and m not in write:
                        self.videos.append(None)
                        self.encoders.append(None)
                        self.traces.append(None)
                        continue
                    path = video_path(output_dir, m, env, cfg.envs_per_milestone)
                    self.videos.append(VideoResult(m, env, path, agent=info))
                    self.encoders.append(EncoderThread(VideoWriter(path, codec, settings)))
                    self.traces.append(TraceWriter(path, cfg.frames if self.saliency else 0) if cfg.trace else None)
        except BaseException:
            self.close()
            raise
        # the envs of each milestone drawn every step: those written, and the one the progress video shows
        self.drawn = [[k for k in range(e_per) if self.encoders[i * e_per + k] is not None
                       or (k == 0 and self._cell(i) is not None)] for i in range(len(loaded))]

    def _cell(self, i: int) -> int | None:
        return None if self.progress is None else self.progress.cell(self.panels[i].milestone)

    def _tiles(self, s: int, d: Step, phase: Sequence[int]) -> tuple[list[_Tile], list[_Tile]]:
        """Step ``d`` of ``phase``'s milestones -> (its tiles the progress video shows, the
        others); writes the trace lines."""
        shown: list[_Tile] = []
        others: list[_Tile] = []
        hud = self._hud(d) if self.cfg.hud else ""
        for j, i in enumerate(phase):
            if not self.drawn[i]:
                continue
            panel = self.panels[i]
            rows = [j * self.e_per + k for k in self.drawn[i]]
            out = panel.unpack(d.outputs[rows])
            values, chars = panel.pack(d.t, self.cfg.frames, out, d.scores[rows], d.lives[rows], hud)
            cell = self._cell(i)
            for n, (k, row) in enumerate(zip(self.drawn[i], rows, strict=True)):
                g = i * self.e_per + k
                maps = d.saliency[row] if d.saliency is not None else None
                tile = _Tile(g, panel, values[n], chars[n], d.screens[row], s, cell if k == 0 else None,
                             float(d.scores[row]), maps)
                (shown if tile.cell is not None else others).append(tile)
                if self.traces[g] is not None:
                    self.traces[g].write(d.t, out, n, d.rewards[row], d.scores[row], d.lives[row],
                                         None if maps is None else (maps, d.saliency_scale[row]))
        return shown, others

    def _hud(self, d: Step) -> str:
        """The ``--hud`` line of step ``d``'s frames: this job's frames/s so far, the step's model
        milliseconds, the latest pass's GL milliseconds per frame."""
        now = time.perf_counter()
        if self.hud_since is None:
            self.hud_since = now
        fps = self.frames_done / (now - self.hud_since) if self.frames_done else None
        return hud_text(fps, d.infer_ms, self.draw_ms)

    def _draw_steps(self, steps: list[Step], phase: Sequence[int]) -> None:
        """Draw and hand to the encoders (and the progress video) every drawn env's frame of
        ``steps`` (consecutive), as few passes of the renderer's tiles as possible: a pass costs
        a fixed overhead on llvmpipe."""
        r = self.renderer
        t0 = time.perf_counter()
        per_step = [self._tiles(s, d, phase) for s, d in enumerate(steps)]
        rank = lambda c: self.layout_rank[c.panel.spec.layout_key]  # noqa: E731
        if self.progress is None:
            # tiles of one layout side by side (one draw call per item kind); steps stay in order
            # within each env, which is all the encoders need
            tiles = sorted((c for shown, others in per_step for c in (*shown, *others)), key=rank)
            chunks = [tiles[k : k + r.max_tiles] for k in range(0, len(tiles), r.max_tiles)]
        else:
            chunks = [sorted(c, key=rank) for c in _passes(per_step, r.max_tiles)]
        self.stage_seconds["pack"] += time.perf_counter() - t0
        # the game half is drawn by GL where frames are converted on the GPU, composed into the
        # progress video or carry saliency maps; otherwise, on a software renderer, the milestone
        # videos' encoders scale it in (OpenCV)
        gl_game = not r.software or self.progress is not None or self.saliency
        whole = r.software and self.saliency  # encoders take the whole RGBA frame, game included
        for chunk in chunks:
            t0 = time.perf_counter()
            r.begin(len(chunk), game=gl_game)
            tile0 = 0
            for _, group in itertools.groupby(chunk, key=lambda c: c.panel.spec.layout_key):
                seg = list(group)
                r.draw(seg[0].panel.spec, np.stack([c.values for c in seg]), np.stack([c.chars for c in seg]),
                       np.stack([c.screen for c in seg]) if gl_game else None, tile0=tile0,
                       saliency=np.stack([c.saliency for c in seg]) if self.saliency else None)
                tile0 += len(seg)
            coded = [(tile, c) for tile, c in enumerate(chunk) if self.encoders[c.env] is not None]
            # a GPU converts whole frames to I420; on a software renderer sampling textures is the
            # costly part, so the encoder threads convert the panel and scale the game in (OpenCV)
            if coded:
                if whole:
                    frames = r.read_rgba(len(chunk))
                else:
                    frames = r.read_panels(len(chunk)) if r.software else r.read_yuv(len(chunk))
            if self.progress is not None:
                self._compose(chunk)
            gl = time.perf_counter() - t0
            self.stage_seconds["gl"] += gl
            self.draw_ms = 1000.0 * gl / len(chunk)
            t0 = time.perf_counter()
            for tile, c in coded:
                self.encoders[c.env].submit((frames[tile], c.screen) if r.software and not whole else frames[tile])
            self.stage_seconds["encode_wait"] += time.perf_counter() - t0

    def _compose(self, chunk: list[_Tile]) -> None:
        """The progress video's frame of every step whose shown tiles are in ``chunk`` (the
        renderer's latest pass), in step order."""
        by_step: dict[int, list[tuple[int, int, float]]] = {}
        for tile, c in enumerate(chunk):
            if c.cell is not None:
                by_step.setdefault(c.step, []).append((tile, c.cell, c.score))
        for step in sorted(by_step):
            self.progress.frame(by_step[step])

    def run(self) -> None:
        """Draw every step the simulation sends, group by group of milestones, finishing each
        group's videos (renamed into place) as it ends; then the progress video's closing card."""
        drawn = sum(len(k) for k in self.drawn)
        for cb in self.callbacks:
            cb.on_start(self.cfg.frames * drawn, f"{self.game.name} x{len(self.panels)} milestones")
        msg = None
        for phase in self.phases:
            if self.progress is not None:
                self.progress.begin([self.panels[i].milestone for i in phase])
            msg = self._play(phase)
            self._phase_done(phase, msg)
        self.stage_seconds.update(msg.stage_seconds)
        if self.progress is not None:
            e = self.e_per
            self.progress.finish({p.milestone: (self.returns[i * e : (i + 1) * e],
                                                [float(x) for x in self.final_scores[i * e : (i + 1) * e]])
                                  for i, p in enumerate(self.panels)})
            self.progress_done = True

    def _play(self, phase: Sequence[int]) -> Done:
        """Draw the steps of ``phase``'s milestones until its :class:`Done`."""
        per_step = sum(len(self.drawn[i]) for i in phase)
        steps_per_pass = max(1, self.renderer.max_tiles // max(1, per_step))
        pending: list[Step] = []

        def flush() -> None:
            self._draw_steps(pending, phase)
            if self.first_frame_time is None:
                self.first_frame_time = time.perf_counter()
            self.frames_done += per_step * len(pending)
            for cb in self.callbacks:
                cb.on_frames(per_step * len(pending))
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
        return msg

    def _phase_done(self, phase: Sequence[int], msg: Done) -> None:
        """Keep the returns of ``phase``'s games and finish its videos."""
        for j, i in enumerate(phase):
            for k in range(self.e_per):
                g, row = i * self.e_per + k, j * self.e_per + k
                self.returns[g] = list(msg.returns[row])
                self.final_scores[g] = float(msg.final_scores[row])
                video, enc, trace = self.videos[g], self.encoders[g], self.traces[g]
                if enc is None:
                    continue
                enc.finish()
                if trace is not None:
                    trace.close()
                    video.trace = trace.path
                video.frames = self.cfg.frames
                video.episode_returns = self.returns[g]
                video.unfinished_score = float(self.final_scores[g])
                self.finished.append(video)

    def close(self) -> None:
        """Abort every video that did not finish (its partial files are deleted); the progress
        video is its owner's to close."""
        done = {id(v) for v in self.finished}
        for e, video in enumerate(self.videos):
            if video is None or id(video) in done:
                continue
            if e < len(self.encoders) and self.encoders[e] is not None:
                self.encoders[e].abort()
            if e < len(self.traces) and self.traces[e] is not None:
                self.traces[e].abort()
