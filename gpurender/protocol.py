"""What crosses from the simulation side of a render to the drawing side: one owner per data shape.

* :class:`StepOutputs` — everything one forward yields for the panel, one row per env. It owns
  its one-float-row-per-env packing (:meth:`StepOutputs.pack` / :meth:`StepOutputs.unpack`, the
  column layout described by :class:`StepColumns`), the form that crosses the process boundary.
* :class:`LevelNormaliser` — what a displayed node level means: raw group means scaled by a
  running per-layer maximum into [0, 1].
* The simulation process's messages (:class:`Loaded`, :class:`Step`, :class:`Done`,
  :class:`Failed`) and the :class:`Channel` that sends and receives them.

torch is imported only inside the functions that take tensors: the drawing process imports this
module without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from gpurender.milestones import Milestone
from gpurender.network import AgentInfo

if TYPE_CHECKING:
    import torch

Q_ALGOS = ("DQN", "QRDQN")
"""Algorithms whose panel shows Q-values (their probabilities are the softmax of those)."""


@dataclass(frozen=True)
class StepColumns:
    """The column layout of one agent's packed rows: action, value, probabilities, [Q-values],
    node levels."""

    n_actions: int
    q_based: bool
    n_nodes: int

    @classmethod
    def of(cls, info: AgentInfo) -> StepColumns:
        return cls(info.n_actions, info.algo in Q_ALGOS, sum(info.node_counts))

    @property
    def width(self) -> int:
        return 2 + self.n_actions * (2 if self.q_based else 1) + self.n_nodes


class StepOutputs(NamedTuple):
    """One forward pass over a batch of observations: everything the panel shows of the agent.

    Fields are torch tensors on the agent's device where the model runs, host numpy arrays on the
    drawing side (:meth:`unpack`). An :class:`~gpurender.agents.AgentStack` gives every field a
    leading milestone axis."""

    actions: Any
    """(B,) int64: the action executed."""
    values: Any
    """(B,): V(s) for actor-critic agents, max_a Q(s, a) for value-based ones."""
    probs: Any
    """(B, A): policy probabilities (PPO/A2C), softmax of the Q-values (DQN)."""
    q_values: Any | None
    """(B, A) Q-values for value-based agents, else None."""
    levels: Any
    """(B, nodes): node levels of every displayed layer, concatenated — raw group means out of
    the model (or attributions, :meth:`~gpurender.agents.Agent.attribute`), [0, 1] brightness
    ([-1, 1] for attributions) once a :class:`LevelNormaliser` has scaled them."""

    def pack(self) -> torch.Tensor:
        """One float32 row per env (leading axes flattened), left on the tensors' device: the
        columns of :class:`StepColumns`. No host synchronisation."""
        import torch

        parts = [self.actions.float()[..., None], self.values.float()[..., None], self.probs.float()]
        if self.q_values is not None:
            parts.append(self.q_values.float())
        parts.append(self.levels.float())
        packed = torch.cat(parts, dim=-1)
        return packed.reshape(-1, packed.shape[-1])

    @classmethod
    def unpack(cls, packed: np.ndarray, columns: StepColumns) -> StepOutputs:
        """Host arrays from :meth:`pack`'s rows (extra columns on the right, padding from a wider
        agent's rows in the same array, are ignored)."""
        a = columns.n_actions
        levels0 = 2 + (2 * a if columns.q_based else a)
        if packed.shape[1] < columns.width:
            raise ValueError(f"expected rows of at least {columns.width} columns, got {packed.shape[1]}")
        return cls(
            actions=packed[:, 0].astype(np.int64),
            values=packed[:, 1],
            probs=packed[:, 2 : 2 + a],
            q_values=packed[:, 2 + a : 2 + 2 * a] if columns.q_based else None,
            levels=packed[:, levels0 : levels0 + columns.n_nodes],
        )

    def rows(self, index: slice | np.ndarray) -> StepOutputs:
        """The same outputs for the rows ``index`` only."""
        return StepOutputs(*(None if f is None else f[index] for f in self))


class LevelNormaliser:
    """Per-layer maximum that maps raw node levels to displayed ones in [-1, 1].

    Activations: hidden and input layers are divided by the largest level that layer has reached
    so far in this video (a running maximum), so brightness is stable and comparable within a
    video. Attributions (``--network-view attribution``, signed): each layer is divided by its
    largest |attribution| in this frame, so every frame shows which nodes pushed its action most.
    Either way a video depends on nothing but its own env (not on the other envs or milestones it
    was rendered beside), and output nodes (probabilities) are shown as they are. Levels are
    shaped (..., envs, nodes): (B, nodes) for one agent, (M, B, nodes) for an
    :class:`~gpurender.agents.AgentStack` of M.
    """

    def __init__(self, node_counts: list[int]) -> None:
        import torch

        self.n_scaled = sum(node_counts[:-1])  # every node but the output layer's
        self.layer_of_node = torch.as_tensor(np.repeat(np.arange(len(node_counts) - 1), node_counts[:-1]))
        self.layers = len(node_counts) - 1
        self.running: torch.Tensor | None = None
        """(..., envs, layers) each video's running maximum, made at the first call."""

    def __call__(self, levels: torch.Tensor, signed: bool = False) -> torch.Tensor:
        """``levels`` scaled: activations by the running maximum, ``signed`` attributions by this
        frame's largest magnitude (the running maximum is then left alone)."""
        import torch

        scaled = levels[..., : self.n_scaled]
        if self.layer_of_node.device != levels.device:
            self.layer_of_node = self.layer_of_node.to(levels.device)
        index = self.layer_of_node.expand_as(scaled)
        if signed:
            zero = torch.zeros(*scaled.shape[:-1], self.layers, device=levels.device)
            peak = zero.scatter_reduce(-1, index, scaled.abs(), "amax")
        else:
            if self.running is None:
                self.running = torch.zeros(*scaled.shape[:-1], self.layers, device=levels.device)
            if self.running.device != levels.device:
                self.running = self.running.to(levels.device)
            peak = self.running = self.running.scatter_reduce(-1, index, scaled, "amax")
        scale = peak.clamp_min(1e-6)[..., self.layer_of_node]
        return torch.cat([scaled / scale, levels[..., self.n_scaled :]], dim=-1).clamp_(-1.0, 1.0)

    def outputs(self, out: StepOutputs, signed: bool = False) -> StepOutputs:
        """``out`` with its raw levels replaced by displayed ones (``signed``: attributions)."""
        return out._replace(levels=self(out.levels, signed))


class SaliencyNormaliser:
    """Running maximum that scales raw saliency maps (:class:`gpurender.saliency.SaliencyMaps`) to
    [0, 1], per video and per map: each env row's actor map is divided by the largest actor value
    that video has reached so far, its critic map likewise (a map that has been all zero stays 0).
    Deterministic, and a video depends on nothing but its own env, as with :class:`LevelNormaliser`."""

    def __init__(self) -> None:
        self.running: np.ndarray | None = None
        """(envs, 2) the running maxima (actor, critic), made at the first call."""

    def __call__(self, actor: np.ndarray, critic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(envs, 84, 84) raw actor and critic maps -> ((envs, 2, 84, 84) float16 in [0, 1], (envs, 2)
        float32 scales the maps were divided by: raw ~ drawn x scale)."""
        both = np.stack([actor, critic], axis=1).astype(np.float32)
        peak = both.reshape(len(both), 2, -1).max(axis=-1)
        self.running = peak if self.running is None else np.maximum(self.running, peak)
        scale = np.where(self.running > 0, self.running, 1.0).astype(np.float32)
        drawn = np.clip(both / scale[:, :, None, None], 0.0, 1.0).astype(np.float16)
        return drawn, scale


# -- messages from the simulation process ---------------------------------------------------------


class Loaded(NamedTuple):
    """The checkpoints are loaded (the first message)."""

    agents: list[tuple[Milestone, AgentInfo]]
    """The milestones that loaded, in order, with what the panel needs of each agent."""
    failures: list[tuple[Path, str]]
    """Checkpoints that did not load: path and one-line reason."""
    device: str
    """The torch device inference runs on."""
    forwards_per_step: int
    """Model forwards launched per env step (fewer than milestones where forwards are stacked)."""


class Step(NamedTuple):
    """One agent step of every env: what the frame at index ``t`` shows (rows in env order)."""

    t: int
    outputs: np.ndarray
    """(envs, width) float32: each milestone's :meth:`StepOutputs.pack` rows, zero-padded to the
    widest agent's width."""
    rewards: np.ndarray
    """(envs,) the unclipped game score gained by the step that led to this frame (0 after a reset)."""
    scores: np.ndarray
    """(envs,) the game's score so far (all lives; restarts after game over)."""
    lives: np.ndarray
    """(envs,) lives left."""
    screens: np.ndarray | None = None
    """(envs, 210, 160, 3) uint8 game screens; travel through shared memory, filled in on receipt."""
    saliency_scale: np.ndarray | None = None
    """With ``--saliency``: (envs, 2) float32, what each env's actor and critic maps were divided by
    (:class:`SaliencyNormaliser`); None without."""
    saliency: np.ndarray | None = None
    """With ``--saliency``: (envs, 2, 84, 84) float16 actor and critic maps in [0, 1]; travel
    through shared memory beside the screens, filled in on receipt."""
    infer_ms: float = 0.0
    """Milliseconds this step's model work took in the simulation process: the forwards (with
    ``--network-view attribution`` their backwards) and the saliency maps (``--hud``)."""


class Done(NamedTuple):
    """Every step was sent."""

    returns: list[list[float]]
    """Per env, the scores of the games finished during the clip."""
    final_scores: np.ndarray
    """(envs,) the score of the game still running at the end."""
    stage_seconds: dict[str, float]
    """The simulation process's time per stage (infer, env, sim_blocked)."""


class Failed(NamedTuple):
    """The simulation process failed; ``traceback`` is empty for an expected (user) error."""

    message: str
    traceback: str = ""


Message = Loaded | Step | Done | Failed


class Channel:
    """One direction of a pipe carrying :data:`Message` values."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, msg: Message) -> None:
        self.conn.send(msg)

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message, or None if none came within ``timeout`` seconds. Raises EOFError
        once the other end is closed."""
        if timeout is not None and not self.conn.poll(timeout):
            return None
        msg = self.conn.recv()
        if not isinstance(msg, Loaded | Step | Done | Failed):
            raise TypeError(f"unexpected message {type(msg).__name__} from the simulation process")
        return msg

    def close(self) -> None:
        self.conn.close()
