"""One milestone's panel: turns what its agent computed into the renderer's per-frame arrays.

Presentation only: the numbers come in as :class:`~gpurender.protocol.StepOutputs` (host
arrays) with the env's score and lives; nothing here runs a model or an env.
"""

from __future__ import annotations

import numpy as np

from gpurender.games import Game, action_meanings
from gpurender.milestones import Milestone
from gpurender.network import AgentInfo
from gpurender.protocol import StepColumns, StepOutputs
from gpurender.render import FrameRenderer, PanelSpec
from gpurender.render.layout import HISTORY_ACTIONS, HISTORY_SCORES


class MilestonePanel:
    """The panel of one milestone's videos (one row per env of the milestone in every array)."""

    def __init__(self, milestone: Milestone, agent: AgentInfo, game: Game, renderer: FrameRenderer,
                 saliency: str = "off", network_view: str = "activations", hud: bool = False) -> None:
        """``saliency``, ``network_view``, ``hud``: as :class:`~gpurender.config.RenderConfig` has them."""
        self.milestone, self.agent = milestone, agent
        self.names = action_meanings(game)
        self.columns = StepColumns.of(agent)
        """How this agent's rows are laid out in a :class:`~gpurender.protocol.Step`'s outputs."""
        self.spec = PanelSpec(game.title, agent.algo, self.names, tuple(agent.layers), milestone.display,
                              milestone.pct is not None, agent.learning_rate, saliency, network_view, hud)
        self.layout = renderer.layout(self.spec)
        self.base_chars = self.layout.static_chars(self.spec)
        self.edge_values = self.layout.edge_values(agent.edge_weights)
        self._hist_actions: np.ndarray | None = None  # (envs, HISTORY_ACTIONS), -1 = empty
        self._hist_scores: np.ndarray | None = None  # (envs, HISTORY_SCORES), NaN = empty

    def unpack(self, packed: np.ndarray) -> StepOutputs:
        """This agent's outputs from its rows of a :class:`~gpurender.protocol.Step`."""
        return StepOutputs.unpack(packed, self.columns)

    def _remember(self, actions: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append this frame's executed actions and episode scores to the per-env histories.
        -> (actions, scores scaled by their peak |score| to [-1, 1], that peak; 0 where all are 0)."""
        n = len(actions)
        if self._hist_actions is None or len(self._hist_actions) != n:
            self._hist_actions = np.full((n, HISTORY_ACTIONS), -1.0, np.float32)
            self._hist_scores = np.full((n, HISTORY_SCORES), np.nan, np.float32)
        self._hist_actions = np.roll(self._hist_actions, -1, axis=1)
        self._hist_actions[:, -1] = actions
        self._hist_scores = np.roll(self._hist_scores, -1, axis=1)
        self._hist_scores[:, -1] = scores
        peak = np.nanmax(np.abs(self._hist_scores), axis=1)
        scaled = self._hist_scores / np.where(peak > 0, peak, 1.0)[:, None]
        return self._hist_actions, np.nan_to_num(scaled, nan=0.0), peak

    def continue_history(self, other: MilestonePanel) -> None:
        """Take over ``other``'s action and score histories: they belong to the game, and the
        preview hands one game from agent to agent."""
        self._hist_actions = None if other._hist_actions is None else other._hist_actions.copy()
        self._hist_scores = None if other._hist_scores is None else other._hist_scores.copy()

    def texts(self, t: int, n_frames: int, out: StepOutputs, k: int, score: float, lives: int) -> dict[str, str]:
        """The dynamic text fields of env ``k`` of this milestone at frame ``t`` (``n_frames`` 0:
        a live preview, no progress)."""
        action = int(out.actions[k])
        q_based = self.columns.q_based
        texts = {
            "frame": f"Frame:     {t + 1:>12,}",
            "progress": f"Progress:  {100.0 * (t + 1) / n_frames:>11.2f}%" if n_frames else "Progress:          live",
            "reward": f"Ep Reward: {score:>12.1f}",
            "lives": f"Lives:     {lives:>12d}",
            "value": f"{'Max Q:' if q_based else 'Value Est:':<11}{out.values[k]:>12.3f}",
            "action": f"Action:    {self.names[action]:>12}",
        }
        row = out.q_values[k] if q_based else out.probs[k]
        for a, name in enumerate(self.names):
            texts[f"act{a}"] = f"{name:<{self.layout.name_len}} {row[a]:7.3f}"
        return texts

    def pack(self, t: int, n_frames: int, out: StepOutputs, scores: np.ndarray,
             lives: np.ndarray, hud: str = "") -> tuple[np.ndarray, np.ndarray]:
        """-> (values, chars) for the renderer, one row per env of this milestone. ``hud``: the
        performance line (:func:`~gpurender.render.layout.hud_text`), shown where the panel has one."""
        n = len(out.actions)
        hist_actions, hist_scores, peak = self._remember(out.actions, scores)
        values = self.layout.values(out.actions, out.probs, out.levels,
                                    np.broadcast_to(self.edge_values, (n, len(self.edge_values))),
                                    hist_actions, hist_scores)
        rows = []
        for k in range(n):
            texts = self.texts(t, n_frames, out, k, float(scores[k]), int(lives[k]))
            texts["score_head"] = self.layout.score_head(float(peak[k]))
            if self.spec.hud:
                texts["hud"] = hud
            rows.append(self.layout.frame_chars(self.base_chars, texts))
        return values, np.stack(rows)
