"""The rollout core: envs, the agents acting in them and the games' scores, on real envs and
real checkpoints."""

from __future__ import annotations

import numpy as np
import torch

from gpurender.agents import Agent
from gpurender.envs import make_atari
from gpurender.games import resolve_game
from gpurender.protocol import StepColumns, StepOutputs
from gpurender.rollout import Rollout, forward_units


def test_scores_are_whole_games_and_restart_after_game_over():
    """Random play of Breakout until every env has ended a game: each env's score is the sum of its
    rewards since its last game over, and each finished game's score is kept."""
    game = resolve_game("Breakout")
    env = make_atari(game, [3, 4], "envpool")
    rollout = Rollout(env, [], torch.device("cpu"))
    rng = np.random.default_rng(0)
    since_over = np.zeros(2)
    finished: list[list[float]] = [[], []]
    for _ in range(5000):
        step = rollout.advance(rng.integers(0, 4, 2))
        since_over += step.rewards
        np.testing.assert_array_equal(rollout.rewards, step.rewards)
        for e in np.flatnonzero(step.game_over):
            finished[e].append(float(since_over[e]))
            since_over[e] = 0
        np.testing.assert_array_equal(rollout.scores.current, since_over)
        if all(finished):
            break
    rollout.close()
    assert all(finished), "no game over in 5000 random steps"
    assert rollout.scores.returns == finished
    assert any(x > 0 for f in finished for x in f)  # real points were scored, not just zeros


def test_each_agent_acts_for_its_own_rows(ppo_checkpoint, dqn_checkpoint):
    """Two milestones x two envs: rows 0-1 are the PPO agent's, rows 2-3 the DQN agent's, and
    each row holds what that agent's own forward gives on that env's observation."""
    ppo, dqn = Agent(ppo_checkpoint, device="cpu"), Agent(dqn_checkpoint, device="cpu")
    game = resolve_game("Breakout")
    rollout = Rollout(make_atari(game, [0, 1, 0, 1], "envpool"), forward_units([ppo, dqn], 2, stack=False),
                      torch.device("cpu"))
    for _ in range(5):
        packed = rollout.act()
        obs = rollout.state.obs
        for agent, rows in ((ppo, slice(0, 2)), (dqn, slice(2, 4))):
            got = StepOutputs.unpack(packed[rows], StepColumns.of(agent.info))
            want = agent.act(obs[rows])
            np.testing.assert_array_equal(got.actions, want.actions.numpy())
            np.testing.assert_allclose(got.probs, want.probs.numpy(), atol=1e-6)
            np.testing.assert_allclose(got.values, want.values.numpy(), atol=1e-6)
        rollout.advance(packed[:, 0])
    rollout.close()
