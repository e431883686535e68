"""The simulation side of a render: a child process that loads the agents, steps the batched
Atari envs and runs one forward per milestone per step, streaming host arrays to the drawing
process. This module imports no torch, OpenGL or FFmpeg at import time: the child is spawned
with it alone, and torch is imported there while the checkpoints are already being read."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpurender.config import RenderConfig
from gpurender.errors import GpurenderError
from gpurender.games import Game, action_meanings, resolve_game
from gpurender.milestones import Milestone, read_checkpoint
from gpurender.protocol import Channel, Done, Failed, Loaded, SaliencyNormaliser, Step

if TYPE_CHECKING:
    import torch

    from gpurender.agents import Agent
    from gpurender.rollout import Rollout
    from gpurender.saliency import SaliencyComputer

log = logging.getLogger(__name__)


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
MAPS_SHAPE = (2, 84, 84)  # a step's actor and critic saliency maps of one env


class ScreenRing:
    """The steps' game screens, handed from the simulation process to the drawing process in
    shared memory: slot ``t % slots`` holds the ``t``-th step sent's (envs, 210, 160, 3)
    screens, ``t`` counted over the whole simulation (not restarting with each group of
    :func:`play_phases`). The pipe carries only the small per-step arrays.

    Steps are produced and consumed in order, so ``free`` (a semaphore of ``slots``) is all the
    bookkeeping: the producer takes one before it writes a slot, the consumer gives it back once
    it has copied the slot out. It also bounds the steps in flight (memory stays flat).

    With ``saliency``, each slot also holds the step's (envs, 2, 84, 84) float16 saliency maps
    (:attr:`maps`), written and taken with the screens."""

    def __init__(self, ctx: mp.context.BaseContext, slots: int, envs: int, saliency: bool = False) -> None:
        self.slots, self.envs = slots, envs
        self.buffer = ctx.RawArray("B", slots * envs * int(np.prod(SCREEN_SHAPE)))
        self.maps = ctx.RawArray("B", slots * envs * int(np.prod(MAPS_SHAPE)) * 2) if saliency else None
        self.free = ctx.Semaphore(slots)

    def slot(self, t: int) -> np.ndarray:
        """Step ``t``'s slot, (envs, 210, 160, 3) uint8, a view of the shared memory."""
        view = np.frombuffer(self.buffer, np.uint8).reshape(self.slots, self.envs, *SCREEN_SHAPE)
        return view[t % self.slots]

    def maps_slot(self, t: int) -> np.ndarray:
        """Step ``t``'s saliency slot, (envs, 2, 84, 84) float16, a view of the shared memory."""
        view = np.frombuffer(self.maps, np.float16).reshape(self.slots, self.envs, *MAPS_SHAPE)
        return view[t % self.slots]

    def put(self, t: int, screens: np.ndarray, stop: mp.Event, maps: np.ndarray | None = None) -> bool:
        """Write step ``t``'s screens (and saliency ``maps``) once its slot is free; False if
        ``stop`` was set first."""
        while not self.free.acquire(timeout=0.1):
            if stop.is_set():
                return False
        self.slot(t)[: len(screens)] = screens
        if maps is not None:
            self.maps_slot(t)[: len(maps)] = maps
        return True

    def take(self, t: int, envs: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Copies of step ``t``'s screens and saliency maps (None without) of its first ``envs``;
        the slot is free again after."""
        screens = self.slot(t)[:envs].copy()
        maps = self.maps_slot(t)[:envs].copy() if self.maps is not None else None
        self.free.release()
        return screens, maps


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies, however it dies (Linux), so no
    simulation outlives its render; elsewhere the pipe's end-of-file stops it at its next send."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def stack_forwards(cfg: RenderConfig, device: torch.device) -> bool:
    """Whether milestones of one architecture share one stacked forward: as ``cfg`` says, by
    default on CUDA only; never with ``--network-view attribution``."""
    if cfg.network_view == "attribution":
        return False  # attributions are one backward per agent
    return cfg.stack_forwards if cfg.stack_forwards is not None else device.type == "cuda"


def play_phases(cfg: RenderConfig, milestones: int) -> list[tuple[int, ...]]:
    """Which of the ``milestones`` loaded milestones play together, group after group: all at
    once, or one after another for a sequence progress video, whose frames are written milestone
    by milestone (so no milestone's frames wait in memory for the others')."""
    if cfg.progress_video and cfg.progress_layout == "sequence":
        return [(i,) for i in range(milestones)]
    return [tuple(range(milestones))]


def simulate(cfg: RenderConfig, game_name: str, milestones: list[Milestone], envs: Sequence[int], conn: Connection,
             stop: mp.Event, ring: ScreenRing, parent: int) -> None:
    """Child process: load the agents, report them (:class:`Loaded`), then play env ``e`` of
    ``envs`` (seeded ``cfg.seed + e``) for each milestone, group by group
    (:func:`play_phases`), sending one :class:`Step` per frame (its screens go through ``ring``)
    and a :class:`Done` after each group; any failure is sent as :class:`Failed`. Messages go
    from this thread: an ``mp.Queue``'s feeder thread would have to win the GIL from the busy
    simulation loop for every message."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    out = Channel(conn)
    pool = ThreadPoolExecutor(max_workers=_read_threads(milestones))
    try:
        reads = read_checkpoints(pool, milestones)  # decompressing while torch is imported
        import cv2
        import torch

        from gpurender.agents import pick_device
        from gpurender.envs import make_atari
        from gpurender.rollout import Rollout, forward_units

        device = pick_device(cfg.device)
        # --stochastic samples from torch's generator: seeded, the same command gives the same videos
        torch.manual_seed(cfg.seed)
        if device.type == "cpu":
            # small batches gain little from intra-op threads; drawing and encoding need the cores
            torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 4)))
        cv2.setNumThreads(0)  # frames are warped as one batch; OpenCV's idle pool workers spin
        game = resolve_game(game_name)
        failures: list[tuple[Path, str]] = []
        loaded = load_agents(cfg, game, device, milestones, failures, reads)
        phases = play_phases(cfg, len(loaded))
        stack = stack_forwards(cfg, device)
        units = [forward_units([loaded[i][1] for i in phase], len(envs), stack) for phase in phases]
        out.send(Loaded([(m, a.info) for m, a in loaded], failures, str(device), max(map(len, units), default=0)))
        if not loaded:
            return
        stages = dict.fromkeys(("infer", "env", "sim_blocked"), 0.0)
        if cfg.saliency != "off":
            from gpurender.saliency import SaliencyComputer

            # built once per group of milestones (once per job unless they play in turn)
            computers = [SaliencyComputer([loaded[i][1] for i in phase], cfg.saliency, stack=stack)
                         for phase in phases]
            stages["saliency"] = 0.0
        else:
            computers = [None] * len(phases)
        sent = 0  # steps sent so far: the ring's slot counter, continuing from group to group
        for phase, phase_units, computer in zip(phases, units, computers, strict=True):
            seeds = [cfg.seed + e for _ in phase for e in envs]
            rollout = Rollout(make_atari(game, seeds, cfg.backend), phase_units, device,
                              attribution=cfg.network_view == "attribution")
            if not _play(cfg, rollout, out, ring, stop, stages, sent, computer):
                return
            sent += cfg.frames
            rollout.close()
            out.send(Done(rollout.scores.returns, rollout.scores.current, stages))
    except (BrokenPipeError, EOFError, ConnectionResetError):
        return  # the parent is gone or stopped listening: nobody to tell
    except GpurenderError as exc:
        _send_failure(out, Failed(str(exc)))
    except BaseException as exc:  # reported by the parent with the child's traceback
        _send_failure(out, Failed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _play(cfg: RenderConfig, rollout: Rollout, out: Channel, ring: ScreenRing, stop: mp.Event, stages: dict[str, float],
          sent: int, saliency: SaliencyComputer | None = None) -> bool:
    """Play ``rollout`` for the clip, one :class:`Step` per frame (screens into ``ring`` slot
    ``sent + t``), adding to ``stages``; False if stopped first. ``saliency``: also compute every
    env's maps after each step's forward, in one call, and send them (scaled per video by a
    :class:`~gpurender.protocol.SaliencyNormaliser`) through the ring."""
    normalise = SaliencyNormaliser() if saliency is not None else None
    for t in range(cfg.frames):
        if stop.is_set():
            return False
        t0 = time.perf_counter()
        outputs = rollout.act()
        actions = outputs[:, 0].astype(np.int64)
        t1 = time.perf_counter()
        stages["infer"] += t1 - t0
        state = rollout.state
        maps = scale = None
        if saliency is not None:
            raw = saliency.maps(state.obs, actions)
            maps, scale = normalise(raw.actor, raw.critic)
            t2 = time.perf_counter()
            stages["saliency"] += t2 - t1
            t1 = t2
        if not ring.put(sent + t, state.screens, stop, maps):
            return False
        out.send(Step(t, outputs, rollout.rewards.copy(), rollout.scores.current.copy(), state.lives,
                      saliency_scale=scale, infer_ms=1000.0 * (t1 - t0)))
        t2 = time.perf_counter()
        stages["sim_blocked"] += t2 - t1
        if t + 1 < cfg.frames:
            rollout.advance(actions)
            stages["env"] += time.perf_counter() - t2
    return True


def _send_failure(out: Channel, msg: Failed) -> None:
    with contextlib.suppress(OSError):
        out.send(msg)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a spawned child without re-running the user's ``__main__``.

    A spawned child imports the parent's main script (or ``-m`` module) before it runs its
    target, so a plain script that calls :func:`gpurender.pipeline.render` at top level would
    render again inside the child. The simulation's target needs nothing from ``__main__``, so
    the child is told there is none while it is started."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class SimulationProcess:
    """The parent's handle on :func:`simulate`: :meth:`loaded` first, then :meth:`get` until
    :class:`Done`, once per group of :func:`play_phases`. A failure in the child is raised here."""

    def __init__(self, cfg: RenderConfig, game: Game, milestones: list[Milestone], envs: Sequence[int]) -> None:
        ctx = mp.get_context("spawn")
        # the drawer takes up to max_tiles frames per pass: room for two passes' worth of steps
        # plus the one being copied out and the one being written, so memory stays bounded by the
        # number of envs, never by the clip's length
        rows = len(milestones) * len(envs)
        steps_per_pass = max(1, cfg.max_tiles // max(1, rows))
        self.ring = ScreenRing(ctx, max(4, 2 * steps_per_pass) + 2, rows, saliency=cfg.saliency != "off")
        conn, child_end = ctx.Pipe(duplex=False)
        self.channel = Channel(conn)
        self.stop = ctx.Event()
        args = (cfg, game.name, milestones, tuple(envs), child_end, self.stop, self.ring, os.getpid())
        self.received = 0
        """Steps received so far: the ring slot of the next one."""
        self.proc = ctx.Process(target=simulate, name="gpurender-simulate", daemon=True, args=args)
        with _main_module_hidden():
            self.proc.start()
        child_end.close()  # the child's copy stays open: its death reads as end-of-file here

    def get(self) -> Loaded | Step | Done:
        """The next message (a :class:`Step` with its screens copied out of the ring); raises if
        the child failed or died."""
        while True:
            try:
                msg = self.channel.recv(timeout=1.0)
            except (EOFError, OSError):
                msg = None
                self.proc.join(5.0)
            if msg is None:
                if not self.proc.is_alive():
                    code = self.proc.exitcode or 0
                    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    raise GpurenderError(f"the simulation process died ({how}; out of memory?)")
                continue
            if isinstance(msg, Failed):
                if msg.traceback:
                    log.error("simulation process failed:\n%s", msg.traceback)
                    raise RuntimeError(msg.message)
                raise GpurenderError(msg.message)
            if isinstance(msg, Step):
                self.received += 1
                screens, maps = self.ring.take(self.received - 1, len(msg.outputs))
                return msg._replace(screens=screens, saliency=maps)
            return msg

    def loaded(self) -> Loaded:
        msg = self.get()
        if not isinstance(msg, Loaded):
            raise RuntimeError(f"expected the simulation's Loaded message first, got {type(msg).__name__}")
        return msg

    def close(self) -> None:
        """Stop the child and wait for it (it is killed if it does not stop within seconds)."""
        self.stop.set()
        deadline = time.monotonic() + 10.0
        while self.proc.is_alive() and time.monotonic() < deadline:
            try:  # drain so a child blocked on a full pipe can see the stop
                self.channel.recv(timeout=0.05)
            except (EOFError, OSError, TypeError):
                break
            self.proc.join(0.05)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.channel.close()
