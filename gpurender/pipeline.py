"""The render loop: checkpoints -> batched Atari + batched inference -> shader-drawn frames ->
H.264. Stages overlap: a simulation *process* steps the envs and runs the models for step t+1
while the main process (which owns the GL context) draws step t and encoder threads compress
step t-1. A process, not a thread: ModernGL holds the GIL while the driver renders and reads
back, which on llvmpipe is most of a frame, and would stall a simulation thread."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gpurender.config import RenderConfig
from gpurender.encode import EncoderThread, EncodeSettings, VideoWriter, choose_encoder
from gpurender.errors import GpurenderError
from gpurender.games import Game, action_meanings, resolve_game
from gpurender.milestones import Milestone, find_milestones
from gpurender.network import AgentInfo
from gpurender.render import FrameRenderer, PanelSpec
from gpurender.render.layout import HISTORY_ACTIONS, HISTORY_SCORES
from gpurender.simulate import SimulationProcess, launch

if TYPE_CHECKING:  # the drawing process never imports torch: only the simulation process does
    import torch

    from gpurender.agents import Agent, LevelNormaliser

log = logging.getLogger(__name__)


@dataclass
class VideoResult:
    """One finished (or skipped) video."""

    milestone: Milestone
    env_index: int
    path: Path
    frames: int = 0
    episode_returns: list[float] = field(default_factory=list)
    skipped: bool = False


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
    architecture share a stacked forward (:class:`gpurender.agents.AgentStack`, on CUDA)."""
    first_frame_seconds: float | None = None
    """From the start of :func:`render` to the first frames drawn (checkpoints loaded, envs made,
    GL context and encoders open): the job's start-up."""

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0


class MilestonePanel:
    """One milestone's panel: turns its agent's outputs into the renderer's per-frame arrays."""

    def __init__(self, milestone: Milestone, agent: Agent | AgentInfo, game: Game, renderer: FrameRenderer) -> None:
        self.milestone, self.agent = milestone, agent  # an AgentInfo is enough for drawing
        self.names = action_meanings(game)
        self.spec = PanelSpec(game.title, agent.algo, self.names, tuple(agent.layers), milestone.display,
                              milestone.pct is not None, agent.learning_rate)
        self.layout = renderer.layout(self.spec)
        self.base_chars = self.layout.static_chars(self.spec)
        self.edge_values = self.layout.edge_values(agent.edge_weights)
        self._normaliser: LevelNormaliser | None = None  # only where this process runs the agent
        self._hist_actions: np.ndarray | None = None  # (envs, HISTORY_ACTIONS), -1 = empty
        self._hist_scores: np.ndarray | None = None  # (envs, HISTORY_SCORES), NaN = empty

    def _remember(self, actions: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append this frame's executed actions and episode rewards to the per-env histories."""
        n = len(actions)
        if self._hist_actions is None or len(self._hist_actions) != n:
            self._hist_actions = np.full((n, HISTORY_ACTIONS), -1.0, np.float32)
            self._hist_scores = np.full((n, HISTORY_SCORES), np.nan, np.float32)
        self._hist_actions = np.roll(self._hist_actions, -1, axis=1)
        self._hist_actions[:, -1] = actions
        self._hist_scores = np.roll(self._hist_scores, -1, axis=1)
        self._hist_scores[:, -1] = scores
        peak = np.nanmax(np.abs(self._hist_scores), axis=1)
        peak = np.where(peak > 0, peak, 1.0)
        return self._hist_actions, np.nan_to_num(self._hist_scores / peak[:, None], nan=0.0), peak

    def continue_history(self, other: MilestonePanel) -> None:
        """Take over ``other``'s action and reward histories: they belong to the game, and the
        preview hands one game from agent to agent."""
        self._hist_actions = None if other._hist_actions is None else other._hist_actions.copy()
        self._hist_scores = None if other._hist_scores is None else other._hist_scores.copy()

    def launch(self, obs: torch.Tensor) -> torch.Tensor:
        """:func:`launch` with this panel's agent (which must be a loaded :class:`Agent`)."""
        if self._normaliser is None:
            from gpurender.agents import LevelNormaliser

            self._normaliser = LevelNormaliser(self.agent.node_counts)
        return launch(self.agent, self._normaliser, obs)

    def unpack(self, packed: np.ndarray) -> dict[str, np.ndarray | None]:
        """Host arrays of everything the panel shows, from :meth:`launch`'s tensor."""
        a = len(self.names)
        q = packed[:, 2 + a : 2 + 2 * a] if self.spec.q_based else None
        start = 2 + (2 * a if self.spec.q_based else a)
        return {
            "actions": packed[:, 0].astype(np.int64),
            "values": packed[:, 1],
            "probs": packed[:, 2 : 2 + a],
            "q_values": q,
            "levels": packed[:, start : start + self.layout.n_nodes],
        }

    def infer(self, obs: np.ndarray | torch.Tensor) -> dict[str, np.ndarray | None]:
        """:meth:`launch` + :meth:`unpack` for one milestone on its own."""
        import torch

        return self.unpack(self.launch(torch.as_tensor(obs, device=self.agent.device)).cpu().numpy())

    def texts(self, t: int, n_frames: int, out: dict, k: int, score: float, lives: int) -> dict[str, str]:
        """The dynamic text fields of env ``k`` of this milestone at frame ``t``."""
        action = int(out["actions"][k])
        q_based = self.spec.q_based
        texts = {
            "frame": f"Frame:     {t + 1:>12,}",
            "progress": f"Progress:  {100.0 * (t + 1) / n_frames:>11.2f}%" if n_frames else "Progress:          live",
            "reward": f"Ep Reward: {score:>12.1f}",
            "lives": f"Lives:     {lives:>12d}",
            "value": f"{'Max Q:' if q_based else 'Value Est:':<11}{out['values'][k]:>12.3f}",
            "action": f"Action:    {self.names[action]:>12}",
        }
        row = out["q_values"][k] if q_based else out["probs"][k]
        for a, name in enumerate(self.names):
            texts[f"act{a}"] = f"{name:<{self.layout.name_len}} {row[a]:7.3f}"
        return texts

    def pack(self, t: int, n_frames: int, out: dict, scores: np.ndarray,
             lives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (values, chars) for the renderer, one row per env of this milestone."""
        n = len(out["actions"])
        hist_actions, hist_scores, peak = self._remember(out["actions"], scores)
        values = self.layout.values(out["actions"], out["probs"], out["levels"],
                                    np.broadcast_to(self.edge_values, (n, len(self.edge_values))),
                                    hist_actions, hist_scores)
        rows = []
        for k in range(n):
            texts = self.texts(t, n_frames, out, k, float(scores[k]), int(lives[k]))
            texts["score_head"] = f"Reward, last {HISTORY_SCORES} frames, max {peak[k]:g}"  # fits 34 chars
            rows.append(self.layout.frame_chars(self.base_chars, texts))
        return values, np.stack(rows)


@dataclass
class _Slot:
    """One milestone of the job: its panel and the env indices it plays."""

    panel: MilestonePanel
    envs: list[int]

    @property
    def milestone(self) -> Milestone:
        return self.panel.milestone


class _StepData(NamedTuple):
    """Everything the panel shows for every env at one step (host arrays)."""

    t: int
    screens: np.ndarray
    packed: np.ndarray
    """(envs, width): every milestone's :func:`launch` output, rows in env order."""
    scores: np.ndarray
    lives: np.ndarray


def video_path(output_dir: Path, m: Milestone, env_index: int, envs_per_milestone: int) -> Path:
    name = m.video_name
    if envs_per_milestone > 1:
        name = name.replace("_analytics.mp4", f"_env{env_index}_analytics.mp4")
    return output_dir / name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".gpurender-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GpurenderError(f"output folder {path} is not writable ({exc.strerror or exc})") from None


def render(cfg: RenderConfig, progress: bool = True, on_frame: Callable[[int], None] | None = None) -> RenderReport:
    """Render one video per milestone (x envs per milestone) as ``cfg`` says."""
    t_start = time.perf_counter()
    game = resolve_game(cfg.game)
    milestones = find_milestones(cfg.model_dir, cfg.milestones)
    output_dir = Path(cfg.output_dir)
    _check_output_dir(output_dir)
    videos: list[VideoResult] = []
    todo: list[Milestone] = []
    for m in milestones:
        paths = [video_path(output_dir, m, e, cfg.envs_per_milestone) for e in range(cfg.envs_per_milestone)]
        if not cfg.force and all(p.exists() for p in paths):
            videos += [VideoResult(m, e, p, skipped=True) for e, p in enumerate(paths)]
        else:
            todo.append(m)
    report = RenderReport(videos, [])
    if not todo:
        report.encoder, _ = choose_encoder(cfg.encoder)
    else:
        # start the simulation first: it imports torch and loads the checkpoints while this process
        # opens the GL context and the encoders
        sim = SimulationProcess(cfg, game, todo)
        try:
            report.encoder, _ = choose_encoder(cfg.encoder)
            with FrameRenderer() as renderer:
                loaded, report.failures, report.device, report.forwards_per_step = sim.loaded()
                if loaded:
                    job = _Job(cfg, game, loaded, report.encoder, output_dir, sim, renderer)
                    try:
                        job.run(progress, on_frame)
                    finally:
                        job.close()
                    report.videos += job.results
                    report.frames = job.frames_done
                    report.renderer = job.renderer_name
                    report.stage_seconds = job.stage_seconds
                    if job.first_frame_time is not None:
                        report.first_frame_seconds = job.first_frame_time - t_start
                    report.wall_seconds = time.perf_counter() - t_start  # the sidecars' render fps
                    job.write_sidecars(report)
        finally:
            sim.close()
    report.wall_seconds = time.perf_counter() - t_start
    return report


class _Job:
    """One batched render of several milestones; owns the renderer and encoders, draws what the
    simulation process sends."""

    def __init__(self, cfg: RenderConfig, game: Game, loaded: list[tuple[Milestone, AgentInfo]], codec: str,
                 output_dir: Path, sim: SimulationProcess, renderer: FrameRenderer) -> None:
        self.cfg, self.game, self.codec, self.sim = cfg, game, codec, sim
        e_per = cfg.envs_per_milestone
        self.n_envs = len(loaded) * e_per
        self.frames_done = 0
        # simulation process: infer, env, sim_blocked (queue full: drawing is slower); main process:
        # pack, gl (draw + convert + read back), encode_wait (encoder queues full), draw_starved
        self.stage_seconds = dict.fromkeys(
            ("infer", "env", "sim_blocked", "pack", "gl", "encode_wait", "draw_starved"), 0.0)
        self.renderer = renderer
        self.renderer_name = self.renderer.renderer
        self.slots = [_Slot(MilestonePanel(m, info, game, self.renderer), list(range(i * e_per, (i + 1) * e_per)))
                      for i, (m, info) in enumerate(loaded)]
        slots = self.slots
        # frames are drawn grouped by layout so each group is one run of tiles
        self.layout_rank = {s.panel.spec.layout_key: k for k, s in reversed(list(enumerate(slots)))}
        settings = EncodeSettings(fps=cfg.fps, crf=cfg.crf, preset=cfg.preset)
        self.results: list[VideoResult] = []
        self.encoders: dict[int, EncoderThread] = {}
        for s in slots:
            for k, e in enumerate(s.envs):
                path = video_path(output_dir, s.milestone, k, cfg.envs_per_milestone)
                self.results.append(VideoResult(s.milestone, k, path))
                self.encoders[e] = EncoderThread(VideoWriter(path, codec, settings))
        self.returns: list[list[float]] = [[] for _ in range(self.n_envs)]
        self.final_scores = np.zeros(self.n_envs)
        self.first_frame_time: float | None = None
        self._finished = False

    def _draw_steps(self, steps: list[_StepData]) -> None:
        """Draw and hand to the encoders every env's frame of ``steps`` (consecutive), as few
        passes of the renderer's tiles as possible: a pass costs a fixed overhead on llvmpipe."""
        r = self.renderer
        t0 = time.perf_counter()
        per_tile = []  # (env, panel, values row, chars row, screen) in drawing order
        for d in steps:
            for s in self.slots:
                out = s.panel.unpack(d.packed[s.envs[0] : s.envs[-1] + 1])
                values, chars = s.panel.pack(d.t, self.cfg.frames, out, d.scores[s.envs], d.lives[s.envs])
                per_tile += [(e, s.panel, values[k], chars[k], d.screens[e]) for k, e in enumerate(s.envs)]
        # tiles of one layout side by side (one draw call per item kind); steps stay in order
        # within each env, which is all the encoders need
        per_tile.sort(key=lambda c: self.layout_rank[c[1].spec.layout_key])
        self.stage_seconds["pack"] += time.perf_counter() - t0
        for start in range(0, len(per_tile), r.max_tiles):
            chunk = per_tile[start : start + r.max_tiles]
            t0 = time.perf_counter()
            r.begin(len(chunk), game=not r.software)
            tile0 = 0
            for _, group in itertools.groupby(chunk, key=lambda c: c[1].spec.layout_key):
                seg = list(group)
                r.draw(seg[0][1].spec, np.stack([c[2] for c in seg]), np.stack([c[3] for c in seg]),
                       None if r.software else np.stack([c[4] for c in seg]), tile0=tile0)
                tile0 += len(seg)
            # a GPU converts whole frames to I420; on a software renderer sampling textures is the
            # costly part, so the encoder threads convert the panel and scale the game in (OpenCV)
            frames = r.read_panels(len(chunk)) if r.software else r.read_yuv(len(chunk))
            self.stage_seconds["gl"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for tile, c in enumerate(chunk):
                self.encoders[c[0]].submit((frames[tile], c[4]) if r.software else frames[tile])
            self.stage_seconds["encode_wait"] += time.perf_counter() - t0

    def run(self, progress: bool, on_frame: Callable[[int], None] | None) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.cfg.frames * self.n_envs, unit="frame", disable=not progress,
                   desc=f"{self.game.name} x{len(self.slots)} milestones", dynamic_ncols=True)
        steps_per_pass = max(1, self.renderer.max_tiles // self.n_envs)
        pending: list[_StepData] = []

        def flush() -> None:
            self._draw_steps(pending)
            if self.first_frame_time is None:
                self.first_frame_time = time.perf_counter()
            for d in pending:
                self.frames_done += self.n_envs
                bar.update(self.n_envs)
                if on_frame is not None:
                    on_frame(d.t)
            pending.clear()

        try:
            while True:
                t0 = time.perf_counter()
                msg = self.sim.get()  # a step's screens come copied out of the shared ring
                self.stage_seconds["draw_starved"] += time.perf_counter() - t0
                if msg[0] == "done":
                    _, self.returns, self.final_scores, sim_stages = msg
                    self.stage_seconds.update(sim_stages)
                    break
                pending.append(_StepData(*msg[1:]))
                if len(pending) == steps_per_pass:
                    flush()
            if pending:
                flush()
            for enc in self.encoders.values():
                enc.finish()
            self._finished = True
        finally:
            bar.close()

    def write_sidecars(self, report: RenderReport) -> None:
        if not self._finished:
            return
        digests = {s.milestone: sha256(s.milestone.path) for s in self.slots}  # once per checkpoint
        for res in self.results:
            s = next(s for s in self.slots if s.milestone == res.milestone)
            e = s.envs[res.env_index]
            info = s.panel.agent
            res.frames = self.cfg.frames
            res.episode_returns = list(self.returns[e])
            meta = {
                "video": res.path.name,
                "checkpoint": str(s.milestone.path.resolve()),
                "checkpoint_sha256": digests[s.milestone],
                "milestone": s.milestone.label,
                "game": self.game.name,
                "algorithm": info.algo,
                "seed": self.cfg.seed + res.env_index,
                "frames": self.cfg.frames,
                "fps": self.cfg.fps,
                "episode_returns": res.episode_returns,
                "unfinished_episode_score": float(self.final_scores[e]),
                "render_fps": round(report.fps, 1),
                "encoder": self.codec,
                "renderer": self.renderer_name,
                "device": report.device,
                "backend": self.cfg.backend,
                "deterministic": not self.cfg.stochastic,
            }
            res.path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")

    def close(self) -> None:
        if not self._finished:
            for enc in self.encoders.values():
                enc.abort()
