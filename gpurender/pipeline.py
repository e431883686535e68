"""The render loop: checkpoints -> batched Atari + batched inference -> shader-drawn frames ->
H.264. Stages overlap: a simulation thread steps the envs and runs the models for step t+1 while
the main thread (which owns the GL context) draws step t and encoder threads compress step t-1."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gpurender.agents import Agent, LevelNormaliser, pick_device
from gpurender.config import RenderConfig
from gpurender.encode import EncoderThread, EncodeSettings, VideoWriter, choose_encoder
from gpurender.envs import make_atari
from gpurender.errors import GpurenderError
from gpurender.games import Game, action_meanings, resolve_game
from gpurender.milestones import Milestone, find_milestones
from gpurender.render import FrameRenderer, PanelLayout, PanelSpec

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

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class _Slot:
    """One milestone of the job: its agent, panel and envs (env indices ``envs``)."""

    milestone: Milestone
    agent: Agent
    spec: PanelSpec
    envs: list[int]
    normaliser: LevelNormaliser
    layout: PanelLayout | None = None
    base_chars: np.ndarray | None = None
    edge_values: np.ndarray | None = None


class _StepData(NamedTuple):
    """Everything the panel shows for every env at one step (host arrays)."""

    t: int
    screens: np.ndarray
    actions: np.ndarray
    probs: list[np.ndarray]
    q_values: list[np.ndarray | None]
    values: np.ndarray
    levels: list[np.ndarray]
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


def _load_slots(cfg: RenderConfig, game: Game, device: torch.device, milestones: Sequence[Milestone],
                failures: list[tuple[Path, str]]) -> list[tuple[Milestone, Agent]]:
    n_actions = len(action_meanings(game))
    loaded = []
    for m in milestones:
        try:
            agent = Agent(m.path, device=device, stochastic=cfg.stochastic)
            if agent.n_actions != n_actions:
                raise GpurenderError(
                    f"{m.path}: the agent has {agent.n_actions} actions but {game.name} has {n_actions}; "
                    "pass the game it was trained on with --game"
                )
            if cfg.algo and cfg.algo != agent.algo:
                raise GpurenderError(f"{m.path}: config says {cfg.algo} but the checkpoint is {agent.algo}")
        except GpurenderError as exc:
            failures.append((m.path, str(exc)))
            log.error("%s", exc)
            continue
        loaded.append((m, agent))
    return loaded


def render(cfg: RenderConfig, progress: bool = True, on_frame: Callable[[int], None] | None = None) -> RenderReport:
    """Render one video per milestone (x envs per milestone) as ``cfg`` says."""
    t_start = time.perf_counter()
    game = resolve_game(cfg.game)
    milestones = find_milestones(cfg.model_dir, cfg.milestones)
    output_dir = Path(cfg.output_dir)
    _check_output_dir(output_dir)
    codec, _ = choose_encoder(cfg.encoder)
    device = pick_device(cfg.device)
    failures: list[tuple[Path, str]] = []
    videos: list[VideoResult] = []

    todo: list[Milestone] = []
    for m in milestones:
        paths = [video_path(output_dir, m, e, cfg.envs_per_milestone) for e in range(cfg.envs_per_milestone)]
        if not cfg.force and all(p.exists() for p in paths):
            videos += [VideoResult(m, e, p, skipped=True) for e, p in enumerate(paths)]
        else:
            todo.append(m)
    report = RenderReport(videos, failures, encoder=codec, device=str(device))
    if not todo:
        report.wall_seconds = time.perf_counter() - t_start
        return report
    loaded = _load_slots(cfg, game, device, todo, failures)
    if not loaded:
        report.wall_seconds = time.perf_counter() - t_start
        return report

    names = action_meanings(game)
    e_per = cfg.envs_per_milestone
    slots = []
    for i, (m, agent) in enumerate(loaded):
        spec = PanelSpec(game.title, agent.algo, names, tuple(agent.layers), m.display,
                         m.pct is not None, agent.learning_rate)
        slots.append(_Slot(m, agent, spec, list(range(i * e_per, (i + 1) * e_per)),
                           LevelNormaliser(agent.node_counts)))
    seeds = [cfg.seed + e for _ in slots for e in range(e_per)]
    job = _Job(cfg, game, slots, seeds, codec, output_dir)
    try:
        job.run(progress, on_frame)
    finally:
        job.close()
    report.videos += job.results
    report.frames = job.frames_done
    report.renderer = job.renderer_name
    report.stage_seconds = job.stage_seconds
    report.wall_seconds = time.perf_counter() - t_start
    job.write_sidecars(report)
    return report


class _Job:
    """One batched render of several milestones; owns envs, renderer and encoders."""

    def __init__(self, cfg: RenderConfig, game: Game, slots: list[_Slot], seeds: list[int], codec: str,
                 output_dir: Path) -> None:
        self.cfg, self.game, self.slots, self.codec = cfg, game, slots, codec
        self.n_envs = len(seeds)
        self.names = action_meanings(game)
        self.frames_done = 0
        self.stage_seconds = {"simulate": 0.0, "draw": 0.0, "encode_wait": 0.0}
        self.env = make_atari(game, seeds, cfg.backend)
        self.renderer = FrameRenderer()
        self.renderer_name = self.renderer.renderer
        for s in slots:
            s.layout = self.renderer.layout(s.spec)
            s.base_chars = s.layout.static_chars(s.spec)
            s.edge_values = s.layout.edge_values(s.agent.edge_weights)
        # frames are drawn grouped by layout so each group is one run of tiles
        keys = {s.spec.layout_key: k for k, s in reversed(list(enumerate(slots)))}
        self.order = sorted(range(len(slots)), key=lambda i: keys[slots[i].spec.layout_key])
        self.slot_index = {id(s): i for i, s in enumerate(slots)}
        settings = EncodeSettings(fps=cfg.fps, crf=cfg.crf, preset=cfg.preset)
        self.results: list[VideoResult] = []
        self.encoders: dict[int, EncoderThread] = {}
        for s in slots:
            for k, e in enumerate(s.envs):
                path = video_path(output_dir, s.milestone, k, cfg.envs_per_milestone)
                self.results.append(VideoResult(s.milestone, k, path))
                self.encoders[e] = EncoderThread(VideoWriter(path, codec, settings))
        self.returns: list[list[float]] = [[] for _ in range(self.n_envs)]
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._finished = False

    # -- simulation thread ----------------------------------------------------------------

    def _simulate(self, out: queue.Queue) -> None:
        try:
            step = self.env.reset()
            scores = np.zeros(self.n_envs, np.float64)
            for t in range(self.cfg.frames):
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                actions = np.zeros(self.n_envs, np.int64)
                probs, qs, levels = [], [], []
                values = np.zeros(self.n_envs, np.float32)
                for s in self.slots:
                    o = s.agent.act(step.obs[s.envs])
                    lv = s.normaliser(o.levels)
                    a = o.actions.cpu().numpy()
                    actions[s.envs] = a
                    values[s.envs] = o.value.float().cpu().numpy()
                    probs.append(o.probs.float().cpu().numpy())
                    qs.append(None if o.q_values is None else o.q_values.float().cpu().numpy())
                    levels.append(lv.float().cpu().numpy())
                data = _StepData(t, step.screens, actions, probs, qs, values, levels, scores.copy(), step.lives)
                self.stage_seconds["simulate"] += time.perf_counter() - t0
                out.put(data)
                if t + 1 == self.cfg.frames:
                    break
                t0 = time.perf_counter()
                step = self.env.step(actions)
                scores += step.rewards
                for e in np.flatnonzero(step.game_over):
                    self.returns[e].append(float(scores[e]))
                    scores[e] = 0.0
                self.stage_seconds["simulate"] += time.perf_counter() - t0
            self._final_scores = scores
        except BaseException as exc:
            self._error = exc
        finally:
            out.put(None)

    # -- main thread: draw + encode ------------------------------------------------------------

    def _texts(self, s: _Slot, d: _StepData, k: int, e: int) -> dict[str, str]:
        n = self.cfg.frames
        name_len = s.layout.name_len
        texts = {
            "frame": f"Frame:     {d.t + 1:>12,}",
            "progress": f"Progress:  {100.0 * (d.t + 1) / n:>11.2f}%",
            "reward": f"Ep Reward: {d.scores[e]:>12.1f}",
            "lives": f"Lives:     {int(d.lives[e]):>12d}",
            "value": f"{'Max Q:' if s.spec.q_based else 'Value Est:':<11}{d.values[e]:>12.3f}",
            "action": f"Action:    {self.names[d.actions[e]]:>12}",
        }
        si = self.slot_index[id(s)]
        row = d.q_values[si] if s.spec.q_based else d.probs[si]
        for a, name in enumerate(self.names):
            texts[f"act{a}"] = f"{name:<{name_len}} {row[k, a]:7.3f}"
        return texts

    def _draw_step(self, d: _StepData) -> None:
        r = self.renderer
        per_env = []
        for i in self.order:
            s, si = self.slots[i], i
            vals = s.layout.values(d.actions[s.envs], d.probs[si], d.levels[si],
                                   np.broadcast_to(s.edge_values, (len(s.envs), len(s.edge_values))))
            for k, e in enumerate(s.envs):
                per_env.append((e, s, vals[k], s.layout.frame_chars(s.base_chars, self._texts(s, d, k, e))))
        for start in range(0, len(per_env), r.max_tiles):
            chunk = per_env[start : start + r.max_tiles]
            r.begin()
            j = 0
            while j < len(chunk):
                s = chunk[j][1]
                end = j
                while end < len(chunk) and chunk[end][1].spec.layout_key == s.spec.layout_key:
                    end += 1
                seg = chunk[j:end]
                envs = [c[0] for c in seg]
                r.draw(s.spec, np.stack([c[2] for c in seg]), np.stack([c[3] for c in seg]),
                       d.screens[envs], tile0=j)
                j += len(seg)
            yuv = r.read_yuv(len(chunk))
            t0 = time.perf_counter()
            for tile, c in enumerate(chunk):
                self.encoders[c[0]].submit(yuv[tile])
            self.stage_seconds["encode_wait"] += time.perf_counter() - t0

    def run(self, progress: bool, on_frame: Callable[[int], None] | None) -> None:
        from tqdm import tqdm

        q: queue.Queue = queue.Queue(maxsize=3)
        sim = threading.Thread(target=self._simulate, args=(q,), name="simulate", daemon=True)
        sim.start()
        bar = tqdm(total=self.cfg.frames * self.n_envs, unit="frame", disable=not progress,
                   desc=f"{self.game.name} x{len(self.slots)} milestones", dynamic_ncols=True)
        try:
            while (d := q.get()) is not None:
                t0 = time.perf_counter()
                self._draw_step(d)
                self.stage_seconds["draw"] += time.perf_counter() - t0
                self.frames_done += self.n_envs
                bar.update(self.n_envs)
                if on_frame is not None:
                    on_frame(d.t)
            if self._error is not None:
                raise self._error
            for enc in self.encoders.values():
                enc.finish()
            self._finished = True
        finally:
            bar.close()
            self._stop.set()
            while sim.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    sim.join(0.05)

    def write_sidecars(self, report: RenderReport) -> None:
        if not self._finished:
            return
        final = getattr(self, "_final_scores", np.zeros(self.n_envs))
        for res in self.results:
            s = next(s for s in self.slots if s.milestone == res.milestone)
            e = s.envs[res.env_index]
            res.frames = self.cfg.frames
            res.episode_returns = list(self.returns[e])
            meta = {
                "video": res.path.name,
                "checkpoint": str(s.milestone.path.resolve()),
                "checkpoint_sha256": sha256(s.milestone.path),
                "milestone": s.milestone.label,
                "game": self.game.name,
                "algorithm": s.agent.algo,
                "seed": self.cfg.seed + res.env_index,
                "frames": self.cfg.frames,
                "fps": self.cfg.fps,
                "episode_returns": res.episode_returns,
                "unfinished_episode_score": float(final[e]),
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
        self.renderer.close()
        self.env.close()
