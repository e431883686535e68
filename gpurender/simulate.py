"""The simulation side of a render: a child process that loads the agents, steps the batched
Atari envs and runs one forward per milestone per step, streaming host arrays to the drawing
process. This module imports no torch, OpenGL or FFmpeg at import time: the child is spawned
with it alone, and torch is imported there while the checkpoints are already being read."""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpurender.config import RenderConfig
from gpurender.errors import GpurenderError
from gpurender.games import Game, action_meanings, resolve_game
from gpurender.milestones import Milestone, read_checkpoint
from gpurender.network import AgentInfo

if TYPE_CHECKING:
    import torch

    from gpurender.agents import Agent, AgentStack, LevelNormaliser

log = logging.getLogger(__name__)


def launch(agent: Agent | AgentStack, normaliser: LevelNormaliser, obs: torch.Tensor) -> torch.Tensor:
    """One batched forward, left on the agent's device as one packed (rows, width) float tensor:
    action, value, probabilities, [Q-values], node levels; no host synchronisation here. An
    :class:`~gpurender.agents.AgentStack` takes (M, B, ...) observations and gives M x B rows,
    agent by agent."""
    import torch

    o = agent.act(obs)
    parts = [o.actions.float()[..., None], o.value.float()[..., None], o.probs.float()]
    if o.q_values is not None:
        parts.append(o.q_values.float())
    parts.append(normaliser(o.levels).float())
    packed = torch.cat(parts, dim=-1)
    return packed.reshape(-1, packed.shape[-1])


def stack_forwards(device: torch.device) -> bool:
    """Whether milestones of one architecture share one stacked forward
    (:class:`~gpurender.agents.AgentStack`): on CUDA, unless ``GPURENDER_STACK_FORWARD=0``
    (``=1`` stacks on any device: for tests and for measuring both ways)."""
    flag = os.environ.get("GPURENDER_STACK_FORWARD", "")
    return flag == "1" or (flag != "0" and device.type == "cuda")


def forward_units(agents: list[Agent], stack: bool) -> list[tuple[Agent | AgentStack, LevelNormaliser, int]]:
    """(agent or stack of consecutive same-architecture agents, its normaliser, agents covered),
    in agent order."""
    from gpurender.agents import AgentStack, LevelNormaliser, stack_key

    units = []
    for _, group in itertools.groupby(agents, key=stack_key if stack else id):
        group = list(group)
        if len(group) == 1:
            units.append((group[0], LevelNormaliser(group[0].node_counts), 1))
        else:
            units.append((AgentStack(group), LevelNormaliser(group[0].node_counts, stack=len(group)), len(group)))
    return units


def read_checkpoints(pool: ThreadPoolExecutor, milestones: Sequence[Milestone]) -> list[Future]:
    """Start reading every milestone's archive on ``pool``'s threads (zlib and lzma release the
    GIL, so they decompress while this thread goes on, e.g. importing torch)."""
    return [pool.submit(read_checkpoint, m.path) for m in milestones]


def load_agents(cfg: RenderConfig, game: Game, device: torch.device, milestones: Sequence[Milestone],
                failures: list[tuple[Path, str]],
                reads: Sequence[Future] | None = None) -> list[tuple[Milestone, Agent]]:
    """Load each milestone's agent and check it fits the game; a bad one is appended to
    ``failures`` (path, one-line reason) and skipped. ``reads``: :func:`read_checkpoints` already
    started; otherwise the archives are read here on a thread per core. The networks are built
    one after another."""
    from gpurender.agents import Agent

    if reads is None:
        with ThreadPoolExecutor(max_workers=_read_threads(milestones)) as pool:
            return load_agents(cfg, game, device, milestones, failures, read_checkpoints(pool, milestones))
    n_actions = len(action_meanings(game))
    loaded = []
    for m, read in zip(milestones, reads, strict=True):
        try:
            agent = Agent(m.path, device=device, stochastic=cfg.stochastic, members=read.result())
            if agent.n_actions != n_actions:
                raise GpurenderError(
                    f"{m.path}: the agent has {agent.n_actions} actions but {game.name} has {n_actions}; "
                    "pass the game it was trained on with --game"
                )
            if cfg.algo and cfg.algo != agent.algo:
                raise GpurenderError(f"{m.path}: config says {cfg.algo} but the checkpoint is {agent.algo}")
        except GpurenderError as exc:
            failures.append((m.path, str(exc)))
            continue
        loaded.append((m, agent))
    return loaded


def _read_threads(milestones: Sequence[Milestone]) -> int:
    return max(1, min(len(milestones), os.cpu_count() or 1))


SCREEN_SHAPE = (210, 160, 3)  # every ALE game's screen


class ScreenRing:
    """The steps' game screens, handed from the simulation process to the drawing process in
    shared memory: slot ``t % slots`` holds step ``t``'s (envs, 210, 160, 3) screens. The pipe
    carries only the small per-step arrays. Pickled through the pipe, the 1.6 MB of screens per
    step at 16 milestones kept the drawer waiting in the pipe's reads (py-spy on an H100; the
    gain in frames/s is not measured yet: the one same-run comparison ran this code twice).

    Steps are produced and consumed in order, so ``free`` (a semaphore of ``slots``) is all the
    bookkeeping: the producer takes one before it writes a slot, the consumer gives it back once
    it has copied the slot out. It also bounds the steps in flight (memory stays flat)."""

    def __init__(self, ctx: mp.context.BaseContext, slots: int, envs: int) -> None:
        self.slots, self.envs = slots, envs
        self.buffer = ctx.RawArray("B", slots * envs * int(np.prod(SCREEN_SHAPE)))
        self.free = ctx.Semaphore(slots)

    def slot(self, t: int) -> np.ndarray:
        """Step ``t``'s slot, (envs, 210, 160, 3) uint8, a view of the shared memory."""
        view = np.frombuffer(self.buffer, np.uint8).reshape(self.slots, self.envs, *SCREEN_SHAPE)
        return view[t % self.slots]

    def put(self, t: int, screens: np.ndarray, stop: mp.Event) -> bool:
        """Write step ``t``'s screens once its slot is free; False if ``stop`` was set first."""
        while not self.free.acquire(timeout=0.1):
            if stop.is_set():
                return False
        self.slot(t)[: len(screens)] = screens
        return True

    def take(self, t: int, envs: int) -> np.ndarray:
        """A copy of step ``t``'s screens (its first ``envs``); the slot is free again after."""
        screens = self.slot(t)[:envs].copy()
        self.free.release()
        return screens


def simulate(cfg: RenderConfig, game_name: str, milestones: list[Milestone], out: Connection,
             stop: mp.Event, ring: ScreenRing) -> None:
    """Child process: load the agents, report them, then send one message per step down ``out``
    (its screens go through ``ring``). Sent from this thread: an ``mp.Queue``'s feeder thread
    has to win the GIL from the busy simulation loop for every message (seen in py-spy)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    pool = ThreadPoolExecutor(max_workers=_read_threads(milestones))
    try:
        reads = read_checkpoints(pool, milestones)  # decompressing while torch is imported
        import torch

        from gpurender.agents import pick_device
        from gpurender.envs import make_atari

        device = pick_device(cfg.device)
        if device.type == "cpu":
            # small batches gain little from intra-op threads; drawing and encoding need the cores
            torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 4)))
        import cv2

        cv2.setNumThreads(0)  # frames are warped as one batch; OpenCV's idle pool workers spin
        game = resolve_game(game_name)
        failures: list[tuple[Path, str]] = []
        loaded = load_agents(cfg, game, device, milestones, failures, reads)
        units = forward_units([a for _, a in loaded], stack_forwards(device))
        out.send(("loaded", [(m, a.info) for m, a in loaded], failures, str(device), len(units)))
        if not loaded:
            return
        e_per = cfg.envs_per_milestone
        n_envs = len(loaded) * e_per
        env = make_atari(game, [cfg.seed + e for _ in loaded for e in range(e_per)], cfg.backend)
        stages = dict.fromkeys(("infer", "env", "sim_blocked"), 0.0)
        returns: list[list[float]] = [[] for _ in range(n_envs)]
        scores = np.zeros(n_envs, np.float64)
        # each unit's observations: its agents' envs, (M, envs, ...) for a stack
        bounds = np.cumsum([0] + [count for _, _, count in units]) * e_per
        spans = [(unit, nrm, slice(int(a), int(b)), (count, e_per) if count > 1 else (e_per,))
                 for (unit, nrm, count), a, b in zip(units, bounds[:-1], bounds[1:], strict=True)]
        step = env.reset()
        for t in range(cfg.frames):
            if stop.is_set():
                return
            t0 = time.perf_counter()
            obs = torch.from_numpy(step.obs).to(device, non_blocking=True)
            packed = [launch(unit, nrm, obs[rows].view(*lead, *obs.shape[1:])) for unit, nrm, rows, lead in spans]
            width = max(p.shape[1] for p in packed)
            host = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in packed]).cpu().numpy()
            t1 = time.perf_counter()
            stages["infer"] += t1 - t0
            if not ring.put(t, step.screens, stop):
                return
            out.send(("step", t, host, scores.copy(), step.lives))
            t2 = time.perf_counter()
            stages["sim_blocked"] += t2 - t1
            if t + 1 == cfg.frames:
                break
            step = env.step(host[:, 0].astype(np.int64))
            scores += step.rewards
            for e in np.flatnonzero(step.game_over):
                returns[e].append(float(scores[e]))
                scores[e] = 0.0
            stages["env"] += time.perf_counter() - t2
        env.close()
        out.send(("done", returns, scores, stages))
    except GpurenderError as exc:
        out.send(("error", str(exc), ""))
    except BaseException as exc:  # reported by the parent with the child's traceback
        out.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class SimulationProcess:
    """The parent's handle on :func:`simulate`."""

    def __init__(self, cfg: RenderConfig, game: Game, milestones: list[Milestone]) -> None:
        ctx = mp.get_context("spawn")
        # the drawer takes up to 16 frames (tiles) per pass: room for two passes' worth of steps
        # plus the one being copied out and the one being written, so memory stays bounded by the
        # number of envs, never by the clip's length
        envs = len(milestones) * cfg.envs_per_milestone
        steps_per_pass = max(1, 16 // max(1, envs))
        self.ring = ScreenRing(ctx, max(4, 2 * steps_per_pass) + 2, envs)
        self.conn, child_end = ctx.Pipe(duplex=False)
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=simulate, args=(cfg, game.name, milestones, child_end, self.stop, self.ring),
                                name="gpurender-simulate", daemon=True)
        self.proc.start()
        child_end.close()  # the child's copy stays open: its death reads as end-of-file here

    def get(self) -> tuple:
        """The next message; raises if the child failed or died."""
        while True:
            try:
                msg = self.conn.recv() if self.conn.poll(1.0) else None
            except (EOFError, OSError):
                msg = None
                self.proc.join(5.0)
            if msg is None:
                if not self.proc.is_alive():
                    code = self.proc.exitcode or 0
                    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    raise GpurenderError(f"the simulation process died ({how}; out of memory?)")
                continue
            if msg[0] == "error":
                if msg[2]:
                    log.error("simulation process failed:\n%s", msg[2])
                    raise RuntimeError(msg[1])
                raise GpurenderError(msg[1])
            if msg[0] == "step":  # ("step", t, screens, packed, scores, lives): one row per env
                _, t, packed, scores, lives = msg
                return "step", t, self.ring.take(t, len(packed)), packed, scores, lives
            return msg

    def loaded(self) -> tuple[list[tuple[Milestone, AgentInfo]], list[tuple[Path, str]], str, int]:
        """-> (agents loaded, failures (path, reason), torch device, forwards per step)."""
        _, loaded, failures, device, forwards = self.get()
        return loaded, failures, device, forwards

    def close(self) -> None:
        self.stop.set()
        while self.proc.is_alive():  # drain so a child blocked on a full pipe can see the stop
            try:
                if self.conn.poll(0.05):
                    self.conn.recv()
            except (EOFError, OSError):
                break
            self.proc.join(0.05)
        self.conn.close()
