"""Batched Atari that shows each agent exactly the observations SB3 trained it on.

Two backends share one interface (:class:`AtariBatch`: ``reset()`` / ``step(actions)`` ->
:class:`AtariStep`):

* ``envpool`` (default, fast): EnvPool steps all envs of all milestones as one batch and hands back
  max-pooled *RGB* frames; :class:`Sb3Atari` applies SB3's remaining wrappers on top
  (EpisodicLife, FireReset, WarpFrame, VecFrameStack) so the policy sees byte for byte what
  ``make_atari_env`` + ``VecFrameStack(4)`` would have made of the same emulator frames.
* ``gym`` (reference and fallback): gymnasium + ale-py through SB3's own ``AtariWrapper`` and
  ``VecFrameStack`` — one env per slot, slower, but SB3's code path by construction.

The video shows the game's real, unclipped score, summed over a whole game (all lives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from gpurender.errors import DependencyMissing, GpurenderError
from gpurender.games import Game, action_meanings

SCREEN_SHAPE = (210, 160, 3)
OBS_SIZE = 84
N_STACK = 4
NOOP, FIRE = 0, 1


class AtariStep(NamedTuple):
    """One agent step of every env in the batch."""

    obs: np.ndarray
    """(N, 4, 84, 84) uint8: the stacked observation the policy acts on next."""
    screens: np.ndarray
    """(N, 210, 160, 3) uint8: the full-colour screen shown in the video."""
    rewards: np.ndarray
    """(N,) float32: unclipped game score gained during this step."""
    game_over: np.ndarray
    """(N,) bool: a whole game ended during this step (the displayed score restarts)."""
    life_lost: np.ndarray
    """(N,) bool: SB3's episode boundary (a life lost or game over); the frame stack was zeroed."""
    lives: np.ndarray
    """(N,) int32: lives left after this step."""


class AtariBatch(Protocol):
    """What the pipeline needs from an Atari backend."""

    num_envs: int
    action_names: tuple[str, ...]

    def reset(self) -> AtariStep: ...
    def step(self, actions: np.ndarray) -> AtariStep: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Preprocessing that can be fed raw frames (and is tested against SB3 on raw frames)


def warp_frames(rgb: np.ndarray) -> np.ndarray:
    """SB3's ``WarpFrame`` on a batch: (N,210,160,3) RGB -> (N,84,84) grey, OpenCV INTER_AREA.

    The N frames are processed as one tall image: 210 rows map to exactly 84 output rows, so
    INTER_AREA never mixes rows of two frames and the result equals N separate calls.
    """
    n, h, w, _ = rgb.shape
    grey = cv2.cvtColor(np.ascontiguousarray(rgb).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (OBS_SIZE, OBS_SIZE * n), interpolation=cv2.INTER_AREA)
    return small.reshape(n, OBS_SIZE, OBS_SIZE)


class FrameStack:
    """SB3's ``VecFrameStack(4)`` for (N,84,84) frames: zero-filled after every episode boundary."""

    def __init__(self, num_envs: int, n_stack: int = N_STACK) -> None:
        self.stack = np.zeros((num_envs, n_stack, OBS_SIZE, OBS_SIZE), np.uint8)

    def reset(self, frames: np.ndarray) -> np.ndarray:
        self.stack[:] = 0
        self.stack[:, -1] = frames
        return self.stack.copy()

    def push(self, frames: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.stack = np.roll(self.stack, -1, axis=1)
        self.stack[done] = 0
        self.stack[:, -1] = frames
        return self.stack.copy()


class SkipSource(Protocol):
    """Batched emulator at SB3's ``MaxAndSkipEnv`` level (after ``NoopResetEnv``).

    ``step``/``reset`` act on the listed env ids only. Frames are (k,210,160,3) RGB: the max of the
    last two raw frames of a step, or after a reset the last raw frame (what ``NoopResetEnv``
    returns).
    """

    num_envs: int

    def reset_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> frames, lives"""
        ...

    def step_ids(self, actions: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """-> frames, rewards, terminated, truncated, lives"""
        ...

    def lives_ids(self, ids: np.ndarray) -> np.ndarray: ...
    def screens(self) -> np.ndarray: ...
    def close(self) -> None: ...


class Sb3Atari:
    """SB3's ``EpisodicLifeEnv`` + ``FireResetEnv`` + ``WarpFrame`` + ``VecFrameStack`` over a
    :class:`SkipSource`, batched. Every branch mirrors the SB3 wrapper it names."""

    def __init__(self, source: SkipSource, action_names: Sequence[str]) -> None:
        self.source = source
        self.num_envs = source.num_envs
        self.action_names = tuple(action_names)
        self.fire = "FIRE" in self.action_names
        if self.fire and (self.action_names[1] != "FIRE" or len(self.action_names) < 3):
            raise GpurenderError(f"unexpected action set {self.action_names} for FIRE-reset")
        self.lives = np.zeros(self.num_envs, np.int32)
        self.was_real_done = np.ones(self.num_envs, bool)
        self.stack = FrameStack(self.num_envs)
        self._frames = np.zeros((self.num_envs, *SCREEN_SHAPE), np.uint8)

    # EpisodicLifeEnv.step on a subset: returns terminated (life loss counts) and raw game-over
    def _life_step(self, action: int | np.ndarray, ids: np.ndarray, acc: dict) -> np.ndarray:
        acts = np.broadcast_to(np.asarray(action, np.int32), ids.shape).copy()
        frames, rew, term, trunc, lives = self.source.step_ids(acts, ids)
        real = term | trunc
        self.was_real_done[ids] = real
        terminated = term | ((lives > 0) & (lives < self.lives[ids]))
        self.lives[ids] = lives
        self._frames[ids] = frames
        acc["reward"][ids] += rew
        acc["game_over"][ids] |= real
        return terminated | trunc

    # EpisodicLifeEnv.reset on a subset
    def _life_reset(self, ids: np.ndarray, acc: dict) -> None:
        real = ids[self.was_real_done[ids]]
        soft = ids[~self.was_real_done[ids]]
        if soft.size:
            frames, rew, term, trunc, _lives = self.source.step_ids(np.zeros(soft.size, np.int32), soft)
            self._frames[soft] = frames
            acc["reward"][soft] += rew
            over = term | trunc
            acc["game_over"][soft] |= over
            real = np.concatenate([real, soft[over]])
        if real.size:
            frames, _ = self.source.reset_ids(real)
            self._frames[real] = frames
        self.lives[ids] = self.source.lives_ids(ids)

    # FireResetEnv.reset (or plain EpisodicLifeEnv.reset) on a subset
    def _reset_sequence(self, ids: np.ndarray, acc: dict) -> None:
        self._life_reset(ids, acc)
        if not self.fire:
            return
        done = self._life_step(FIRE, ids, acc)
        if done.any():
            self._life_reset(ids[done], acc)
        done = self._life_step(2, ids, acc)
        keep = self._frames[ids].copy()  # FireResetEnv returns step(2)'s obs even if it then resets
        if done.any():
            self._life_reset(ids[done], acc)
            self._frames[ids] = keep

    def _acc(self) -> dict:
        return {"reward": np.zeros(self.num_envs, np.float32), "game_over": np.zeros(self.num_envs, bool)}

    def reset(self) -> AtariStep:
        ids = np.arange(self.num_envs)
        acc = self._acc()
        self.was_real_done[:] = True
        self._reset_sequence(ids, acc)
        obs = self.stack.reset(warp_frames(self._frames))
        zeros = np.zeros(self.num_envs, bool)
        return AtariStep(obs, self.source.screens(), acc["reward"], zeros, zeros.copy(), self.lives.copy())

    def step(self, actions: np.ndarray) -> AtariStep:
        ids = np.arange(self.num_envs)
        acc = self._acc()
        done = self._life_step(np.asarray(actions, np.int32), ids, acc)
        if done.any():
            self._reset_sequence(ids[done], acc)
        obs = self.stack.push(warp_frames(self._frames), done)
        return AtariStep(obs, self.source.screens(), acc["reward"], acc["game_over"], done, self.lives.copy())

    def close(self) -> None:
        self.source.close()


# ---------------------------------------------------------------------------------------------
# Sources


def _import_envpool():
    """``import envpool`` with only its Atari family registered.

    ``envpool/__init__`` imports ``envpool.entry``, which registers every env family EnvPool
    ships and so imports matplotlib, jumanji renderers and more (see benchmarks/README.md for
    the start-up it costs), for envs gpurender never makes. If nothing imported EnvPool yet, the entry
    module is held out while the package loads and the Atari registration is imported on its
    own; a later ``import envpool.entry`` (someone else's code) still registers the rest."""
    import sys
    import types

    if "envpool" not in sys.modules:
        sys.modules["envpool.entry"] = types.ModuleType("envpool.entry")
        try:
            import envpool
            import envpool.atari.registration
        except Exception:  # not installed, or an EnvPool that needs its entry module: the plain import decides
            for name in [m for m in sys.modules if m == "envpool" or m.startswith("envpool.")]:
                del sys.modules[name]
        finally:
            sys.modules.pop("envpool.entry", None)
            if hasattr(sys.modules.get("envpool"), "entry"):
                del sys.modules["envpool"].entry
    import envpool
    import envpool.atari.registration

    return envpool


class EnvPoolSource:
    """EnvPool at ``MaxAndSkipEnv`` level: max-pooled RGB, unclipped rewards, real game over."""

    def __init__(self, game: Game, seeds: Sequence[int], noop_max: int = 30, num_threads: int = 0) -> None:
        try:
            envpool = _import_envpool()
        except ImportError:
            raise DependencyMissing("envpool", why="the fast Atari backend needs it; or use --backend gym") from None
        self.num_envs = len(seeds)
        self.env = envpool.make_gymnasium(
            game.envpool_id, num_envs=self.num_envs, batch_size=self.num_envs, num_threads=num_threads,
            env_seed=[int(s) for s in seeds], img_height=210, img_width=160, gray_scale=False,
            stack_num=1, frame_skip=4, noop_max=max(noop_max, 1), episodic_life=False, reward_clip=False,
            use_fire_reset=False, repeat_action_probability=0.0, full_action_space=False,
            render_mode="rgb_array",
        )
        self._lives = np.zeros(self.num_envs, np.int32)

    def _screens(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.env.render(env_ids=ids))

    def reset_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, info = self.env.reset(env_id=ids)
        order = np.argsort(np.argsort(info["env_id"]))  # results come back in env_id order
        self._lives[ids] = np.asarray(info["lives"])[order]
        # NoopResetEnv hands on the last raw frame, not a max-pool: that is the current screen.
        return self._screens(ids), self._lives[ids]

    def step_ids(self, actions: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        obs, rew, term, trunc, info = self.env.step(actions, env_id=ids)
        got = np.asarray(info["env_id"])
        if not np.array_equal(got, ids):
            pos = {e: i for i, e in enumerate(got)}
            idx = np.array([pos[e] for e in ids])
            obs, rew, term, trunc = obs[idx], rew[idx], term[idx], trunc[idx]
            lives = np.asarray(info["lives"])[idx]
        else:
            lives = np.asarray(info["lives"])
        self._lives[ids] = lives
        # EnvPool's frames are channel-planar; cv2.merge interleaves them far faster than
        # numpy's strided transpose copy
        frames = np.empty((len(obs), *obs.shape[2:], obs.shape[1]), np.uint8)
        for frame, planes in zip(frames, obs, strict=True):
            cv2.merge(list(planes), dst=frame)
        return frames, rew.astype(np.float32), term.astype(bool), trunc.astype(bool), lives.astype(np.int32)

    def lives_ids(self, ids: np.ndarray) -> np.ndarray:
        return self._lives[ids].copy()

    def screens(self) -> np.ndarray:
        return self._screens(np.arange(self.num_envs))

    def close(self) -> None:
        self.env.close()


def make_raw_gym(game: Game, seed: int):
    """One raw ale-py env as ``make_atari_env`` builds it (NoFrameskip-v4, Monitor), seeded."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    gym.register_envs(ale_py)
    env = Monitor(gym.make(game.gym_id, render_mode="rgb_array"))
    env.action_space.seed(seed)
    env.reset(seed=seed)
    return env


class GymSkipSource:
    """ale-py envs through SB3's own ``NoopResetEnv`` + ``MaxAndSkipEnv``: a :class:`SkipSource`
    made of SB3 code, used to test :class:`Sb3Atari` on raw frames."""

    def __init__(self, game: Game, seeds: Sequence[int], noop_max: int = 30) -> None:
        from stable_baselines3.common.atari_wrappers import MaxAndSkipEnv, NoopResetEnv

        self.envs = [MaxAndSkipEnv(NoopResetEnv(make_raw_gym(game, s), noop_max), 4) for s in seeds]
        self.num_envs = len(self.envs)

    def reset_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.stack([self.envs[i].reset()[0] for i in ids])
        return frames, self.lives_ids(ids)

    def step_ids(self, actions: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        out = [self.envs[i].step(int(a)) for a, i in zip(actions, ids, strict=True)]
        frames = np.stack([o[0] for o in out])
        rew = np.array([o[1] for o in out], np.float32)
        term = np.array([o[2] for o in out], bool)
        trunc = np.array([o[3] for o in out], bool)
        return frames, rew, term, trunc, self.lives_ids(ids)

    def lives_ids(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.envs[i].unwrapped.ale.lives() for i in ids], np.int32)

    def screens(self) -> np.ndarray:
        return np.stack([e.unwrapped.ale.getScreenRGB() for e in self.envs])

    def close(self) -> None:
        for e in self.envs:
            e.close()


class GymAtari:
    """Reference backend: SB3's ``AtariWrapper`` + ``DummyVecEnv`` + ``VecFrameStack(4)``, as
    ``make_atari_env`` builds them (rewards left unclipped: the agent never sees them)."""

    def __init__(self, game: Game, seeds: Sequence[int], noop_max: int = 30) -> None:
        from stable_baselines3.common.atari_wrappers import AtariWrapper
        from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

        def factory(seed: int):
            return lambda: AtariWrapper(make_raw_gym(game, seed), noop_max=noop_max, clip_reward=False)

        self.venv = VecFrameStack(DummyVecEnv([factory(int(s)) for s in seeds]), N_STACK)
        self.num_envs = len(seeds)
        self.action_names = action_meanings(game)
        self._raw = [e.unwrapped for e in self.venv.venv.envs]  # type: ignore[attr-defined]

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(obs.transpose(0, 3, 1, 2))

    def _screens(self) -> np.ndarray:
        return np.stack([e.ale.getScreenRGB() for e in self._raw])

    def _lives(self) -> np.ndarray:
        return np.array([e.ale.lives() for e in self._raw], np.int32)

    def reset(self) -> AtariStep:
        obs = self.venv.reset()
        zeros = np.zeros(self.num_envs, bool)
        return AtariStep(self._obs(obs), self._screens(), np.zeros(self.num_envs, np.float32), zeros,
                         zeros.copy(), self._lives())

    def step(self, actions: np.ndarray) -> AtariStep:
        obs, rew, dones, infos = self.venv.step(np.asarray(actions))
        over = np.array(["episode" in i for i in infos], bool)
        return AtariStep(self._obs(obs), self._screens(), rew.astype(np.float32), over, dones.astype(bool),
                         self._lives())

    def close(self) -> None:
        self.venv.close()


BACKENDS = ("envpool", "gym")


def make_atari(game: Game, seeds: Sequence[int], backend: str = "envpool") -> AtariBatch:
    """Build the batch: one env per seed, in order."""
    if backend == "envpool":
        return Sb3Atari(EnvPoolSource(game, seeds), action_meanings(game))
    if backend == "gym":
        return GymAtari(game, seeds)
    raise GpurenderError(f"unknown env backend {backend!r}; expected one of {', '.join(BACKENDS)}")
