"""The rollout core: a batch of Atari envs, the agents acting in them, and the games' scores.

This is the one loop that steps envs and acts in them; the simulation process
(:mod:`gpurender.simulate`), the preview and the stage benchmarks all drive a :class:`Rollout`.
Scores are counted in one place, :class:`EpisodeScores`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gpurender.envs import AtariBatch, AtariStep
from gpurender.protocol import LevelNormaliser

if TYPE_CHECKING:
    import torch

    from gpurender.agents import Agent, AgentStack


class EpisodeScores:
    """The game score of every env: unclipped, summed over a whole game (all lives), restarting
    after game over; the scores of finished games are kept."""

    def __init__(self, n_envs: int) -> None:
        self.current = np.zeros(n_envs, np.float64)
        """(envs,) the running game's score so far."""
        self.returns: list[list[float]] = [[] for _ in range(n_envs)]
        """Per env, the final scores of the games finished so far."""

    def record(self, step: AtariStep) -> None:
        """Count one step's rewards; a game that ended is stored and its score restarts at 0."""
        self.current += step.rewards
        for e in np.flatnonzero(step.game_over):
            self.returns[e].append(float(self.current[e]))
            self.current[e] = 0.0


class ForwardUnit(NamedTuple):
    """One forward per step: an agent, or a stack of agents of one architecture, acting for a
    contiguous range of env rows."""

    agent: Agent | AgentStack
    normaliser: LevelNormaliser
    rows: slice
    """The env rows it acts for."""
    lead: tuple[int, ...]
    """How those rows are shaped for it: (envs,), or (agents, envs per agent) for a stack."""


def forward_units(agents: Sequence[Agent], envs_per_agent: int, stack: bool) -> list[ForwardUnit]:
    """The forwards that act for ``agents``, agent ``i`` playing env rows
    ``i * envs_per_agent …``; with ``stack``, consecutive agents of one architecture share one
    :class:`~gpurender.agents.AgentStack` forward."""
    from gpurender.agents import AgentStack, stack_key

    units, row = [], 0
    for _, group in itertools.groupby(agents, key=stack_key if stack else id):
        group = list(group)
        rows = slice(row, row + len(group) * envs_per_agent)
        if len(group) == 1:
            units.append(ForwardUnit(group[0], LevelNormaliser(group[0].node_counts), rows, (envs_per_agent,)))
        else:
            units.append(ForwardUnit(AgentStack(group), LevelNormaliser(group[0].node_counts),
                                     rows, (len(group), envs_per_agent)))
        row = rows.stop
    return units


class Rollout:
    """Envs, the forwards acting in them, and their scores.

    The frame at index ``t`` shows :attr:`state` (observation, screens, lives) and
    :attr:`scores` ``.current``; :meth:`act` runs the forwards on it and :meth:`advance` plays the
    chosen actions. ``units`` may be replaced between steps (the preview hands one game from agent
    to agent). ``attribution``: node levels are attributions toward the executed actions
    (:meth:`Agent.attribute <gpurender.agents.Agent.attribute>`; units of single agents only)."""

    def __init__(self, env: AtariBatch, units: Sequence[ForwardUnit], device: torch.device,
                 attribution: bool = False) -> None:
        self.env, self.units, self.device, self.attribution = env, list(units), device, attribution
        self.state = env.reset()
        self.scores = EpisodeScores(env.num_envs)
        self.rewards = np.zeros(env.num_envs, np.float32)
        """(envs,) the reward of the step that led to :attr:`state` (0 after the first reset)."""

    def act(self) -> np.ndarray:
        """Every unit's forward on the current observations, launched back to back, then ONE
        device-to-host copy: (envs, width) float32 rows of :meth:`StepOutputs.pack
        <gpurender.protocol.StepOutputs.pack>`, zero-padded to the widest unit."""
        import torch

        obs = torch.from_numpy(self.state.obs).to(self.device, non_blocking=True)
        packed = []
        for u in self.units:
            rows = obs[u.rows].view(*u.lead, *obs.shape[1:])
            out = u.agent.attribute(rows) if self.attribution else u.agent.act(rows)
            packed.append(u.normaliser.outputs(out, signed=self.attribution).pack())
        width = max(p.shape[1] for p in packed)
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in packed]).cpu().numpy()

    def advance(self, actions: np.ndarray) -> AtariStep:
        """Play one action per env; the scores count the step's rewards."""
        self.state = self.env.step(np.asarray(actions, np.int64))
        self.rewards = self.state.rewards
        self.scores.record(self.state)
        return self.state

    def close(self) -> None:
        self.env.close()
