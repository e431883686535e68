"""The progress video: one 1920 x 1080 H.264 video of a whole training run, its score chart as a
PNG beside it, and its sidecar (``gpurender progress``, ``gpurender render --progress-video``).

* ``grid``: the milestones playing side by side, each captioned with its milestone and its live
  score: 2 x 2 at full size for up to 4, 3 x 3 at 2/3 for up to 9, 4 x 4 at 1/2 for up to 16;
  of more, an even 16 including the first and the last (a warning names the others).
* ``sequence``: each milestone in turn, full screen, after a title card.
* Both end with a closing card: each milestone's finished games' returns as points against
  training progress, with their mean. The card is also written as ``<video>_scores.png``.

The milestones' frames are the render's own: the job (:class:`gpurender.pipeline._Job`) draws
them as tiles of the renderer's tiled target, and :class:`ProgressVideo` composes each progress
frame from those tiles on the GL side (:class:`~gpurender.render.passes.ComposePass`, or an
image copy at 1:1) and draws the captions and cards over it (:mod:`gpurender.render.cards`).
Every number comes from the emulator and the models; the games are the milestone videos' games
(env ``e`` seeded ``seed + e``), and the video shows env 0 of each milestone.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import moderngl
import numpy as np
from PIL import Image

from gpurender.config import PROGRESS_LAYOUTS, RenderConfig
from gpurender.encode import EncoderThread, EncodeSettings, VideoWriter, rgba_to_i420
from gpurender.errors import GpurenderError
from gpurender.milestones import Milestone
from gpurender.outputs import MilestoneLocks, write_atomic
from gpurender.render import FrameRenderer, Target
from gpurender.render.atlas import GlyphAtlas
from gpurender.render.cards import (
    FACES,
    SIZE,
    ChartData,
    Sheet,
    captions,
    chart_card,
    full_placement,
    grid_placement,
    milestone_caption,
    score_text,
    title_card,
)
from gpurender.render.layout import BACKGROUND
from gpurender.render.passes import ComposePass, I420Pass, TextPass
from gpurender.sidecar import stale_reason, write_sidecar

if TYPE_CHECKING:
    from gpurender.games import Game
    from gpurender.network import AgentInfo

log = logging.getLogger(__name__)

MAX_GRID = 16
"""Milestones a grid shows at most (4 x 4)."""
TITLE_SECONDS = 2.0
"""Each title card of the sequence layout."""
CLOSING_SECONDS = 4.0
"""The closing card (the score chart)."""


def progress_video_path(output_dir: Path, layout: str) -> Path:
    """``training_progress_grid.mp4`` / ``training_progress_sequence.mp4`` in ``output_dir``."""
    return Path(output_dir) / f"training_progress_{layout}.mp4"


def chart_path(video: Path) -> Path:
    """The closing card's PNG beside the progress video: ``training_progress_grid_scores.png``."""
    return video.with_name(f"{video.stem}_scores.png")


def card_frames(seconds: float, fps: int) -> int:
    return max(1, round(seconds * fps))


def progress_frames(layout: str, milestones: int, clip_frames: int, fps: int) -> int:
    """Frames of a progress video of ``milestones`` milestones: the clip, then the closing card
    (grid); a title card and the clip per milestone, then the closing card (sequence)."""
    closing = card_frames(CLOSING_SECONDS, fps)
    if layout == "grid":
        return clip_frames + closing
    return milestones * (card_frames(TITLE_SECONDS, fps) + clip_frames) + closing


def even_selection(n: int, k: int) -> list[int]:
    """``k`` indices of ``0..n-1`` spread evenly, the first and the last included (all if n <= k)."""
    if n <= k:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def shown_milestones(layout: str, milestones: Sequence[Milestone]) -> tuple[list[Milestone], list[Milestone]]:
    """-> (the milestones the progress video shows, those left out): a grid shows at most
    :data:`MAX_GRID` (an even selection), a sequence all."""
    if layout != "grid" or len(milestones) <= MAX_GRID:
        return list(milestones), []
    keep = set(even_selection(len(milestones), MAX_GRID))
    shown = [m for i, m in enumerate(milestones) if i in keep]
    left = [m for i, m in enumerate(milestones) if i not in keep]
    log.warning("the grid shows %d of the %d milestones, evenly spread (%s); left out: %s. "
                "Choose with --milestones, or use --layout sequence", MAX_GRID, len(milestones),
                ", ".join(m.display for m in shown), ", ".join(m.display for m in left))
    return shown, left


@dataclass
class ProgressResult:
    """The progress video of a job (rendered, or kept from an earlier run)."""

    path: Path
    layout: str
    milestones: list[Milestone] = field(default_factory=list)
    """The milestones shown, in order."""
    returns: list[list[list[float]]] = field(default_factory=list)
    """Per milestone shown, per env: the returns of the games finished within the clip."""
    unfinished_scores: list[list[float]] = field(default_factory=list)
    """Per milestone shown, per env: the score of the game still running at the clip's end."""
    left_out: list[Milestone] = field(default_factory=list)
    """Milestones a grid of more than 16 left out."""
    frames: int = 0
    chart: ChartData | None = None
    """What the closing card's chart drew (points and means, in the PNG's pixels)."""
    skipped: bool = False
    """It existed, made from the same checkpoints with the same settings, and was kept."""
    busy_pid: int | None = None
    """Skipped because this live process is writing it (0: a process whose id is unknown)."""

    @property
    def chart_png(self) -> Path:
        return chart_path(self.path)


@dataclass(frozen=True)
class ProgressPlan:
    """A progress video to render: where, and which milestones it shows."""

    path: Path
    layout: str
    shown: tuple[Milestone, ...]
    left_out: tuple[Milestone, ...]


def progress_settings(cfg: RenderConfig, game: str, shown: Sequence[Milestone],
                      digests: Sequence[str]) -> dict[str, Any]:
    """The sidecar keys that decide a progress video's frames (a re-run keeps it only when all match)."""
    return {
        "layout": cfg.progress_layout,
        "milestones": [m.label for m in shown],
        "checkpoints_sha256": list(digests),
        "game": game,
        "seed": cfg.seed,
        "envs_per_milestone": cfg.envs_per_milestone,
        "clip_frames": cfg.frames,
        "frames": progress_frames(cfg.progress_layout, len(shown), cfg.frames, cfg.fps),
        "fps": cfg.fps,
        "backend": cfg.backend,
        "deterministic": not cfg.stochastic,
        "crf": cfg.crf,
        "preset": cfg.preset,
    }


def plan_progress(cfg: RenderConfig, game: Game, milestones: Sequence[Milestone], output_dir: Path, digests,
                  locks: MilestoneLocks) -> ProgressPlan | ProgressResult:
    """The progress video ``cfg`` asks for: a plan to render it, or (a :class:`ProgressResult`)
    kept because its sidecar matches, or skipped because another live process is writing it.
    ``digests``: checkpoint path -> sha256; ``locks``: the job's locks, the video's lock added."""
    path = progress_video_path(output_dir, cfg.progress_layout)
    shown, left = shown_milestones(cfg.progress_layout, milestones)
    holder = locks.try_acquire(path.name)
    if holder is not None:
        log.warning("skipping %s: another process (%s) is writing it", path.name, holder or "?")
        return ProgressResult(path, cfg.progress_layout, shown, left_out=left, skipped=True, busy_pid=holder)
    if path.exists() and not cfg.force:
        wanted = progress_settings(cfg, game.name, shown, [digests[m.path] for m in shown])
        reason = stale_reason(path, wanted, trace=False)
        if reason is None:
            return ProgressResult(path, cfg.progress_layout, shown, left_out=left, skipped=True)
        log.warning("re-rendering %s: %s", path.name, reason)
    return ProgressPlan(path, cfg.progress_layout, tuple(shown), tuple(left))


def write_progress_sidecar(cfg: RenderConfig, game: Game, result: ProgressResult, digests,
                           agents: dict[Milestone, AgentInfo], report: dict[str, Any]) -> None:
    """``<video>.json``: what made the progress video, and every shown milestone's returns.
    ``report``: the job's render_fps, encoder, renderer and device."""
    shas = [digests[m.path] for m in result.milestones]
    meta = {
        "video": result.path.name,
        "chart": result.chart_png.name,
        "width": SIZE[0],
        "height": SIZE[1],
        **progress_settings(cfg, game.name, result.milestones, shas),
        "title_card_frames": card_frames(TITLE_SECONDS, cfg.fps) if result.layout == "sequence" else 0,
        "closing_card_frames": card_frames(CLOSING_SECONDS, cfg.fps),
        "shown": [
            {"milestone": m.label, "display": m.display, "pct": m.pct, "steps": m.steps,
             "checkpoint": str(m.path.resolve()), "checkpoint_sha256": sha, "algorithm": agents[m].algo,
             "episode_returns": returns, "unfinished_episode_scores": unfinished,
             "mean_return": float(np.mean(flat)) if (flat := [r for env in returns for r in env]) else None}
            for m, sha, returns, unfinished in zip(result.milestones, shas, result.returns, result.unfinished_scores,
                                                   strict=True)
        ],
        "left_out": [m.label for m in result.left_out],
        **report,
    }
    write_sidecar(result.path, meta)


def encoder_threads(cores: int | None = None) -> int:
    """Codec threads of the progress video's one 1080p stream: one below 4 cores (where the
    milestones' drawing and encoding already take them), else half the cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return 1 if cores < 4 else min(8, cores // 2)


class ProgressVideo:
    """Writes one progress video while a job draws its milestones' frames.

    The job calls :meth:`begin` as each group of milestones starts playing (a sequence's title
    card goes there), :meth:`frame` once per step with the tiles of the renderer's latest pass
    that show the shown milestones, and :meth:`finish` with every game's returns (the closing
    card and the PNG); :meth:`close` releases its GL objects and, unless finished, deletes the
    partial video."""

    def __init__(self, cfg: RenderConfig, game: Game, renderer: FrameRenderer, plan: ProgressPlan,
                 agents: dict[Milestone, AgentInfo], codec: str) -> None:
        self.cfg, self.game, self.renderer, self.plan = cfg, game, renderer, plan
        self.milestones = [m for m in plan.shown if m in agents]  # those that loaded
        if plan.layout == "grid" and len(self.milestones) > renderer.max_tiles:
            raise GpurenderError(f"the grid of {len(self.milestones)} milestones needs them in one pass of the "
                                 f"renderer, which draws {renderer.max_tiles} (max_tiles)")
        self.agents = agents
        self.layout = plan.layout
        self.result: ProgressResult | None = None
        ctx = renderer.ctx
        self._released: list = []
        self.atlas = GlyphAtlas(FACES)
        self.text = self._own(TextPass(ctx, self.atlas))
        self.compose = self._own(ComposePass(ctx))
        self.t_frame = self._own(ctx.texture(SIZE, 4))
        self.t_frame.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.target = Target(self._own(ctx.framebuffer([self.t_frame])))
        self.i420 = None if renderer.software else self._own(I420Pass(ctx, SIZE))
        if self.i420 is not None:
            t_yuv = self._own(ctx.texture((SIZE[0], SIZE[1] * 3 // 2), 1))
            self.i420_target = Target(self._own(ctx.framebuffer([t_yuv])))
        grid = self.layout == "grid"
        self.placement = grid_placement(len(self.milestones)) if grid else full_placement()
        labels = [milestone_caption(m) for m in self.milestones] if grid else [""]
        self._covered = sum(w * h for _, _, w, h in self.placement.cells) >= SIZE[0] * SIZE[1]
        self.captions = self._own(captions(self.atlas, self.placement, labels))
        self.frames = 0
        settings = EncodeSettings(fps=cfg.fps, crf=cfg.crf, preset=cfg.preset, threads=encoder_threads())
        self.writer: EncoderThread = EncoderThread(VideoWriter(plan.path, codec, settings, size=SIZE))

    def _own(self, obj):
        self._released.append(obj)
        return obj

    def cell(self, m: Milestone) -> int | None:
        """The caption cell milestone ``m``'s frames go to; None if it is not shown."""
        if m not in self.agents or m not in self.milestones:
            return None
        return self.milestones.index(m) if self.layout == "grid" else 0

    # -- frames ----------------------------------------------------------------------------------

    def begin(self, playing: Sequence[Milestone]) -> None:
        """``playing`` start their clips: in a sequence, its title card, then its caption."""
        if self.layout != "sequence":
            return
        for m in playing:
            if m not in self.milestones:
                continue
            k = self.milestones.index(m)
            last = self.milestones[-1].steps
            card = title_card(self.atlas, m, k, len(self.milestones), self._run_name(), last)
            try:
                self._card(card, card_frames(TITLE_SECONDS, self.cfg.fps))
            finally:
                card.release()
            self.captions.set_text("label0", milestone_caption(m))

    def frame(self, tiles: Sequence[tuple[int, int, float]]) -> None:
        """One progress frame from ``(tile, cell, score)``: the renderer's latest frame in
        ``tile`` scaled into caption cell ``cell``, its caption's live score ``score``."""
        self.renderer.make_current()
        scale = self.placement.scale
        if not self._covered:
            self.target.fbo.clear(*BACKGROUND, 1.0)
        copies = [(tile, self.placement.cells[cell]) for tile, cell, _ in tiles]
        if not (scale == 1.0 and all(self.renderer.copy_tile(tile, self.t_frame, int(x), int(y))
                                     for tile, (x, y, _, _) in copies)):
            self.compose.render(self.renderer.frame_target, self.target, copies, scale)
        for _, cell, score in tiles:
            self.captions.set_text(f"score{cell}", score_text(score))
        self._draw(self.captions)
        self.writer.submit(self._read_frame())
        self.frames += 1

    def _draw(self, sheet: Sheet) -> None:
        p = self.renderer.passes
        sheet.draw(self.renderer.ctx, p.rects, p.edges, p.nodes, self.text, self.target)

    def _read_frame(self) -> np.ndarray:
        """The frame as the encoder takes it: I420 converted by the GPU, or RGBA (a software
        renderer: the encoder thread converts it)."""
        if self.i420 is None:
            return self._read_rgba()
        self.i420.render(self.target, self.i420_target, 1)
        self.renderer.finish()
        out = np.empty((SIZE[1] * 3 // 2, SIZE[0]), np.uint8)
        self.i420_target.fbo.read_into(out, viewport=(0, 0, SIZE[0], SIZE[1] * 3 // 2), components=1, alignment=1)
        return out

    def _read_rgba(self) -> np.ndarray:
        self.renderer.finish()
        data = self.target.fbo.read(viewport=(0, 0, *SIZE), components=4, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(SIZE[1], SIZE[0], 4)

    def _card(self, sheet: Sheet, frames: int) -> np.ndarray:
        """Draw ``sheet`` as ``frames`` identical frames; -> its RGBA image."""
        self.renderer.make_current()
        self._draw(sheet)
        rgba = self._read_rgba()
        yuv = rgba_to_i420(rgba)  # once for all its frames
        for _ in range(frames):
            self.writer.submit(yuv)
        self.frames += frames
        return rgba

    def _run_name(self) -> str:
        algos = dict.fromkeys(self.agents[m].algo for m in self.milestones)
        return f"{self.game.name} | {' / '.join(algos)}"

    # -- the end ---------------------------------------------------------------------------------

    def finish(self, returns: dict[Milestone, tuple[list[list[float]], list[float]]]) -> ProgressResult:
        """The closing card from ``returns`` (per milestone: each env's finished games' returns,
        and each env's unfinished score), its PNG, and the video renamed into place."""
        cfg = self.cfg
        per_milestone = [[r for env in returns[m][0] for r in env] for m in self.milestones]
        e = cfg.envs_per_milestone
        seeds = f"seed {cfg.seed}" if e == 1 else f"seeds {cfg.seed}-{cfg.seed + e - 1}"
        games = (f"{e} env{'s' if e > 1 else ''} per milestone ({seeds}, "
                 f"{'sampled' if cfg.stochastic else 'deterministic'} actions)")
        clip = f"{cfg.clip_seconds:g} s, {cfg.frames:,} steps"
        sheet, chart = chart_card(self.atlas, self.milestones, per_milestone, self._run_name(), games, clip)
        try:
            rgba = self._card(sheet, card_frames(CLOSING_SECONDS, cfg.fps))
        finally:
            sheet.release()
        self.writer.finish()
        png = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(png, format="PNG", compress_level=3)
        write_atomic(chart_path(self.plan.path), png.getvalue())
        self.result = ProgressResult(self.plan.path, self.layout, list(self.milestones),
                                     [returns[m][0] for m in self.milestones],
                                     [returns[m][1] for m in self.milestones],
                                     list(self.plan.left_out), self.frames, chart)
        return self.result

    def close(self) -> None:
        """Delete the partial video unless it finished; release the GL objects."""
        if self.result is None:
            self.writer.abort()
        while self._released:
            self._released.pop().release()


def progress_table(result: ProgressResult) -> list[str]:
    """Lines of a table: each shown milestone, its games' returns and their mean."""
    rows = [("milestone", "games finished", "episode returns", "mean")]
    for m, returns in zip(result.milestones, result.returns, strict=True):
        flat = [r for env in returns for r in env]
        rows.append((m.display, str(len(flat)), ", ".join(f"{x:g}" for x in flat) or "no game finished",
                     f"{np.mean(flat):.1f}" if flat else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def describe(result: ProgressResult) -> list[str]:
    """What the summary says of the progress video."""
    if result.busy_pid is not None:
        return [f"progress video: skipped (process {result.busy_pid or '?'} is writing it): {result.path}"]
    if result.skipped:
        return [f"progress video: skipped (exists; --force re-renders): {result.path}"]
    return [f"progress video ({result.layout}, {len(result.milestones)} milestones, {result.frames} frames, "
            f"{SIZE[0]}x{SIZE[1]}): {result.path}", f"score chart: {result.chart_png}"]


__all__ = ["CLOSING_SECONDS", "MAX_GRID", "PROGRESS_LAYOUTS", "TITLE_SECONDS", "ProgressPlan", "ProgressResult",
           "ProgressVideo", "chart_path", "describe", "even_selection", "plan_progress", "progress_frames",
           "progress_table", "progress_video_path", "shown_milestones", "write_progress_sidecar"]
