"""Batched Atari: SB3-exact preprocessing on the same raw frames, EnvPool's frames, determinism,
game names, and (slow, opt-in) statistical equality of play between the backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.atari_wrappers import MaxAndSkipEnv, WarpFrame

from gpurender.envs import GymAtari, GymSkipSource, Sb3Atari, make_atari, warp_frames
from gpurender.errors import GpurenderError
from gpurender.games import action_meanings, resolve_game

BREAKOUT = resolve_game("Breakout")
MSPACMAN = resolve_game("MsPacman")


class _FrameEnv(gym.Env):
    """Just the spaces of a raw Atari env, so SB3's wrappers can be built around it."""

    observation_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    action_space = gym.spaces.Discrete(4)


def _random_play_screens(game, steps: int, seed: int = 0) -> np.ndarray:
    env = make_atari(game, [seed, seed + 1], "envpool")
    rng = np.random.default_rng(seed)
    screens = [env.reset().screens]
    for _ in range(steps):
        screens.append(env.step(rng.integers(0, len(env.action_names), 2)).screens)
    env.close()
    return np.concatenate(screens)


# ---------------------------------------------------------------------------------------------
# WarpFrame on a batch


@pytest.mark.parametrize("n", [1, 3, 64])
def test_warp_frames_random_equals_sb3(n: int):
    rgb = np.random.default_rng(n).integers(0, 256, (n, 210, 160, 3), dtype=np.uint8)
    sb3 = WarpFrame(_FrameEnv())
    want = np.stack([sb3.observation(f)[:, :, 0] for f in rgb])
    got = warp_frames(rgb)
    assert got.shape == (n, 84, 84) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("game", [BREAKOUT, MSPACMAN], ids=lambda g: g.name)
def test_warp_frames_real_screens_equal_sb3(game):
    rgb = _random_play_screens(game, steps=40)
    assert len({f.tobytes() for f in rgb}) > 10  # the frames really differ
    sb3 = WarpFrame(_FrameEnv())
    want = np.stack([sb3.observation(f)[:, :, 0] for f in rgb])
    np.testing.assert_array_equal(warp_frames(rgb), want)
    # a non-contiguous view (e.g. a slice of a bigger buffer) gives the same result
    np.testing.assert_array_equal(warp_frames(rgb[::2]), want[::2])


# ---------------------------------------------------------------------------------------------
# Sb3Atari == SB3's AtariWrapper + VecFrameStack, fed the same raw frames


@pytest.mark.parametrize(
    ("game", "seeds", "max_steps"),
    [(BREAKOUT, [3, 11], 1500), (MSPACMAN, [3, 11], 2500)],
    ids=["Breakout-fire", "MsPacman-nofire"],
)
def test_sb3_atari_matches_sb3_wrappers_on_same_frames(game, seeds, max_steps):
    ours = Sb3Atari(GymSkipSource(game, seeds), action_meanings(game))
    ref = GymAtari(game, seeds)
    assert ours.action_names == ref.action_names == action_meanings(game)
    assert ours.fire == ("FIRE" in ours.action_names)
    a, b = ours.reset(), ref.reset()
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.screens, b.screens)
    np.testing.assert_array_equal(a.lives, b.lives)

    rng = np.random.default_rng(1234)
    lives_lost = games_over = 0
    first_over = None
    for t in range(max_steps):
        actions = rng.integers(0, len(ours.action_names), len(seeds))
        a, b = ours.step(actions), ref.step(actions)
        assert a.obs.dtype == np.uint8 and a.obs.shape == (len(seeds), 4, 84, 84)
        for field in ("obs", "screens", "life_lost", "game_over", "lives", "rewards"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{field} at step {t}")
        # SB3's VecFrameStack zeroes the stack at every episode (life) boundary
        assert not a.obs[a.life_lost, :3].any()
        lives_lost += int((a.life_lost & ~a.game_over).sum())
        games_over += int(a.game_over.sum())
        if first_over is None and a.game_over.any():
            first_over = t
        if first_over is not None and t >= first_over + 50:
            break
    ours.close()
    ref.close()
    assert games_over >= 1, f"no game over in {max_steps} steps: the comparison never crossed a real reset"
    assert lives_lost >= 3, f"only {lives_lost} lost lives"


# ---------------------------------------------------------------------------------------------
# EnvPool's own frame skip + max-pool == SB3's MaxAndSkipEnv over EnvPool's raw frames


def _envpool(game, frame_skip: int, seed: int):
    import envpool

    return envpool.make_gymnasium(
        game.envpool_id, num_envs=1, batch_size=1, env_seed=[seed], img_height=210, img_width=160,
        gray_scale=False, stack_num=1, frame_skip=frame_skip, noop_max=1,  # noop_max=0 segfaults 1.2.5
        episodic_life=False, reward_clip=False, use_fire_reset=False, repeat_action_probability=0.0,
        full_action_space=False, render_mode="rgb_array",
    )


class _RawEnvPool(gym.Env):
    """A frame_skip=1 EnvPool env as a plain gymnasium env whose observation is the raw screen.

    (EnvPool's own observation with frame_skip=1 is not the raw frame: it max-pools in place into
    a buffer that is never refreshed, so the screen is read with ``render``.)
    """

    observation_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)

    def __init__(self, game, seed: int) -> None:
        self.env = _envpool(game, 1, seed)
        self.action_space = gym.spaces.Discrete(int(self.env.action_space.n))

    def _screen(self) -> np.ndarray:
        return np.asarray(self.env.render(env_ids=np.arange(1)))[0]

    def reset(self, *, seed=None, options=None):
        _, info = self.env.reset()
        return self._screen(), {"lives": int(info["lives"][0])}

    def step(self, action):
        _, rew, term, trunc, info = self.env.step(np.array([action], np.int32))
        return self._screen(), float(rew[0]), bool(term[0]), bool(trunc[0]), {"lives": int(info["lives"][0])}


@pytest.mark.parametrize(("game", "steps"), [(BREAKOUT, 300), (MSPACMAN, 120)], ids=lambda x: getattr(x, "name", x))
def test_envpool_maxpool_equals_sb3_max_and_skip(game, steps):
    fast = _envpool(game, 4, seed=7)
    ref = MaxAndSkipEnv(_RawEnvPool(game, seed=7), skip=4)
    obs, info = fast.reset()
    ref_obs, ref_info = ref.reset()
    np.testing.assert_array_equal(obs[0].transpose(1, 2, 0), ref_obs, err_msg="reset frames differ")
    assert int(info["lives"][0]) == ref_info["lives"]

    rng = np.random.default_rng(0)
    overs = 0
    for t in range(steps):
        action = int(rng.integers(fast.action_space.n))
        obs, rew, term, trunc, info = fast.step(np.array([action], np.int32))
        ref_obs, ref_rew, ref_term, ref_trunc, ref_info = ref.step(action)
        np.testing.assert_array_equal(obs[0].transpose(1, 2, 0), ref_obs, err_msg=f"step {t}")
        assert float(rew[0]) == ref_rew, f"step {t}"
        assert (bool(term[0]), bool(trunc[0])) == (ref_term, ref_trunc), f"step {t}"
        assert int(info["lives"][0]) == ref_info["lives"], f"step {t}"
        if ref_term or ref_trunc:  # a game over inside the skip: both keep SB3's stale max-pool
            overs += 1
            obs, _ = fast.reset()
            ref_obs, _ = ref.reset()
            np.testing.assert_array_equal(obs[0].transpose(1, 2, 0), ref_obs, err_msg=f"reset after step {t}")
    fast.close()
    if game is BREAKOUT:
        assert overs >= 1  # seed 7 + these actions end a game at step 250: the terminal path is covered


# ---------------------------------------------------------------------------------------------
# The envpool backend as the pipeline uses it


def _random_actions(n_actions: int, n_envs: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_actions, n_envs) for _ in range(steps)]


def _play(env, steps: int, seed: int = 0):
    """Reset, then ``steps`` seeded random steps: the list of every :class:`AtariStep`."""
    actions = _random_actions(len(env.action_names), env.num_envs, steps, seed)
    return [env.reset()] + [env.step(a) for a in actions]


def test_make_atari_envpool_shapes():
    env = make_atari(BREAKOUT, [1, 2, 3], "envpool")
    assert env.num_envs == 3
    assert env.action_names == ("NOOP", "FIRE", "RIGHT", "LEFT")
    for s in (env.reset(), env.step(np.array([1, 2, 3]))):
        assert s.obs.shape == (3, 4, 84, 84) and s.obs.dtype == np.uint8
        assert s.screens.shape == (3, 210, 160, 3) and s.screens.dtype == np.uint8
        assert s.rewards.shape == (3,) and s.rewards.dtype == np.float32
        assert s.game_over.dtype == bool and s.life_lost.dtype == bool
        assert s.lives.dtype == np.int32 and (s.lives == 5).all()
    first = env.reset()
    assert not first.obs[:, :3].any() and first.obs[:, 3].any()  # zero-filled stack, like SB3
    env.close()


def test_make_atari_envpool_deterministic():
    seeds = [5, 6, 7]
    runs = []
    for _ in range(2):
        env = make_atari(BREAKOUT, seeds, "envpool")
        runs.append(_play(env, 200))
        env.close()
    for t, (a, b) in enumerate(zip(*runs, strict=True)):
        for field in a._fields:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{field} at step {t}")
    assert sum(int(s.rewards.sum()) for s in runs[0]) > 0  # the run did something


def test_make_atari_envpool_batched_equals_per_env():
    """Env i of a batch plays exactly like a batch of one seeded with seeds[i]."""
    seeds = [5, 6, 7]
    actions = _random_actions(9, len(seeds), 100)
    env = make_atari(MSPACMAN, seeds, "envpool")
    batch = [env.reset()] + [env.step(a) for a in actions]
    env.close()
    for i, seed in enumerate(seeds):
        env = make_atari(MSPACMAN, [seed], "envpool")
        single = [env.reset()] + [env.step(a[i : i + 1]) for a in actions]
        env.close()
        for t, (a, b) in enumerate(zip(batch, single, strict=True)):
            np.testing.assert_array_equal(a.obs[i], b.obs[0], err_msg=f"env {i} step {t}")
            np.testing.assert_array_equal(a.screens[i], b.screens[0], err_msg=f"env {i} step {t}")
            assert (a.rewards[i], a.lives[i], a.game_over[i]) == (b.rewards[0], b.lives[0], b.game_over[0])


def test_make_atari_envpool_envs_get_their_own_seeds():
    """Fed the same actions, envs with different seeds play different games (MsPacman's ghosts
    follow the seeded no-op start; in Breakout many seeds share a serve, so it cannot tell)."""
    env = make_atari(MSPACMAN, [5, 6, 7], "envpool")
    steps = [env.reset()]
    rng = np.random.default_rng(0)
    for _ in range(60):
        steps.append(env.step(np.full(3, rng.integers(9))))
    env.close()
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert any(not np.array_equal(s.screens[i], s.screens[j]) for s in steps), (i, j)


def test_make_atari_envpool_rewards_are_game_score():
    """MsPacman scores 10 per dot, 50 per power pill: SB3's sign() clipping would show 1."""
    env = make_atari(MSPACMAN, [0, 1], "envpool")
    rewards = np.array([s.rewards for s in _play(env, 200)])
    env.close()
    assert rewards.max() >= 10
    assert set(np.unique(rewards)) >= {0.0, 10.0}
    assert (rewards % 10 == 0).all() and (rewards >= 0).all()


def test_make_atari_envpool_game_over_resets_lives():
    env = make_atari(BREAKOUT, [0, 1], "envpool")
    env.reset()
    seen = lost = 0
    for a in _random_actions(4, 2, 600, seed=1):
        s = env.step(a)
        if s.game_over.any():
            seen += 1
            assert (s.lives[s.game_over] == 5).all()  # a new game: all lives back
            assert s.life_lost[s.game_over].all()  # a game over is also an episode boundary
            assert not s.obs[s.game_over, :3].any()
        lost += int((s.life_lost & ~s.game_over).sum())
        if seen >= 2 and lost >= 3:
            break
    env.close()
    assert seen >= 2 and lost >= 3


def test_make_atari_unknown_backend():
    with pytest.raises(GpurenderError, match=r"unknown env backend 'nope'.*envpool, gym"):
        make_atari(BREAKOUT, [0], "nope")


# ---------------------------------------------------------------------------------------------
# Game names


@pytest.mark.parametrize("text", ["Breakout", "BreakoutNoFrameskip-v4", "ALE/Breakout-v5", "breakout", " Breakout-v5 "])
def test_resolve_game_spellings(text: str):
    game = resolve_game(text)
    assert (game.rom, game.name) == ("breakout", "Breakout")
    assert (game.envpool_id, game.gym_id, game.title) == ("Breakout-v5", "BreakoutNoFrameskip-v4", "BREAKOUT")


def test_resolve_game_multiword():
    game = resolve_game("ALE/MsPacman-v5")
    assert (game.rom, game.name, game.gym_id) == ("ms_pacman", "MsPacman", "MsPacmanNoFrameskip-v4")
    assert resolve_game("ms_pacman") == resolve_game("MsPacmanNoFrameskip-v4") == game


def test_resolve_game_unknown_lists_near_matches():
    with pytest.raises(GpurenderError, match=r"unknown Atari game 'Breakot'.*did you mean.*Breakout"):
        resolve_game("Breakot")
    with pytest.raises(GpurenderError, match="unknown Atari game 'Zzzzqx'"):
        resolve_game("Zzzzqx")


def test_action_meanings():
    assert action_meanings(BREAKOUT) == ("NOOP", "FIRE", "RIGHT", "LEFT")
    pacman = action_meanings(MSPACMAN)
    assert len(pacman) == 9 and pacman[0] == "NOOP" and "FIRE" not in pacman
    venture = action_meanings(resolve_game("Venture"))
    assert len(venture) == 18 and venture[:2] == ("NOOP", "FIRE") and venture[-1] == "DOWNLEFTFIRE"


# ---------------------------------------------------------------------------------------------
# Behaviour: the envpool backend plays like SB3's own evaluation (opt-in, needs trained agents)


def _mean_ci(scores: list[float]) -> tuple[float, float, float]:
    x = np.asarray(scores, np.float64)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def _envpool_game_scores(agent, game, n_games: int, seed: int, max_steps: int = 27_000) -> list[float]:
    """One full game (all lives) per env, the agent acting through the envpool backend and the
    renderer's own rollout core."""
    from gpurender.rollout import Rollout, forward_units

    rollout = Rollout(make_atari(game, [seed + i for i in range(n_games)], "envpool"),
                      forward_units([agent], n_games, stack=False), agent.device)
    for _ in range(max_steps):
        rollout.advance(rollout.act()[:, 0])
        if all(rollout.scores.returns):
            break
    rollout.close()
    # games cut at the step limit count as they stand
    return [r[0] if r else float(s) for r, s in zip(rollout.scores.returns, rollout.scores.current, strict=True)]


def _sb3_game_scores(agent, game, n_games: int, seed: int) -> list[float]:
    """SB3's own evaluation: ``make_atari_env`` + ``VecFrameStack(4)``, Monitor's full-game scores."""
    import ale_py
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    venv = VecFrameStack(make_atari_env(game.gym_id, n_envs=8, seed=seed,
                                        env_kwargs={"max_episode_steps": 108_000}), 4)
    scores, _ = evaluate_policy(agent.model, venv, n_eval_episodes=n_games, deterministic=not agent.stochastic,
                                return_episode_rewards=True)
    venv.close()
    return [float(x) for x in scores]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GPURENDER_DEMO_CHECKPOINTS"),
                    reason="set GPURENDER_DEMO_CHECKPOINTS to a run folder of trained checkpoints")
def test_envpool_backend_plays_like_sb3_evaluation():
    """Mean full-game score through the envpool backend vs SB3's ``evaluate_policy``: the 95 %
    confidence intervals overlap. Game: ``GPURENDER_DEMO_GAME`` (Breakout); games per side:
    ``GPURENDER_STAT_GAMES`` (30). Stochastic play on both sides, so no run can stall forever."""
    from gpurender.agents import Agent
    from gpurender.milestones import find_milestones

    folder = Path(os.environ["GPURENDER_DEMO_CHECKPOINTS"])
    game = resolve_game(os.environ.get("GPURENDER_DEMO_GAME", "Breakout"))
    n_games = int(os.environ.get("GPURENDER_STAT_GAMES", "30"))
    milestone = find_milestones([folder])[-1]  # the most trained agent plays the longest games
    agent = Agent(milestone.path, device="cpu", stochastic=True)
    ours = _envpool_game_scores(agent, game, n_games, seed=10_000)
    theirs = _sb3_game_scores(agent, game, n_games, seed=20_000)
    (m1, lo1, hi1), (m2, lo2, hi2) = _mean_ci(ours), _mean_ci(theirs)
    msg = f"envpool {m1:.1f} [{lo1:.1f}, {hi1:.1f}] vs SB3 {m2:.1f} [{lo2:.1f}, {hi2:.1f}] ({milestone.path.name})"
    print(msg)
    assert lo1 <= hi2 and lo2 <= hi1, msg


def test_envpool_is_imported_with_only_its_atari_family():
    """Start-up: the other env families (matplotlib, jumanji, ...) stay unimported, Atari works,
    and someone else's later ``import envpool.entry`` still registers everything."""
    pytest.importorskip("envpool")
    code = (
        "import sys\n"
        "from gpurender.envs import _import_envpool\n"
        "ep = _import_envpool()\n"
        "assert 'envpool.jumanji' not in sys.modules and 'matplotlib' not in sys.modules\n"
        "atari = len(ep.list_all_envs())\n"
        "ep.make_gymnasium('Breakout-v5', num_envs=1).reset()\n"
        "import envpool.entry\n"
        "assert len(ep.list_all_envs()) > atari\n"
        "print('ok', atari)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
