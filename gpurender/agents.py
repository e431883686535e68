"""Load SB3 Atari checkpoints, describe their real network, and run one batched forward per step
that yields everything the panel shows: action, probabilities or Q-values, value, activations."""

from __future__ import annotations

import base64
import contextlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from gpurender.errors import DependencyMissing, GpurenderError
from gpurender.milestones import check_zip

MAX_NODES = 8
"""Displayed nodes per hidden layer; each stands for an equal, contiguous group of units."""
MAX_ACTIONS = 18
ALGOS = ("PPO", "A2C", "DQN", "QRDQN")
_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise GpurenderError(f"bad --device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GpurenderError(f"--device {device}: torch sees no CUDA GPU (torch {torch.__version__})")
    return dev


@dataclass(frozen=True)
class LayerInfo:
    """One column of the network diagram, read from the loaded module."""

    name: str
    """Input, Conv1, Conv2, Dense1, ..., Output."""
    kind: str
    """input | conv | dense | output."""
    shape: tuple[int, ...]
    """Output shape of the layer for one observation, e.g. (32, 20, 20) or (512,)."""
    nodes: int
    """How many nodes the diagram draws for it."""

    @property
    def units(self) -> int:
        return self.shape[0]

    @property
    def shape_text(self) -> str:
        if self.kind == "input":
            return "x".join(map(str, self.shape))
        if len(self.shape) == 3:
            return f"{self.shape[0]}@{self.shape[1]}x{self.shape[2]}"
        return str(self.shape[0])


@dataclass(frozen=True)
class AgentInfo:
    """What the panel needs to know about an agent, without the model (cheap to send between
    processes)."""

    algo: str
    n_actions: int
    learning_rate: float
    layers: tuple[LayerInfo, ...]
    edge_weights: tuple[np.ndarray, ...]

    @property
    def node_counts(self) -> list[int]:
        return [layer.nodes for layer in self.layers]


class AgentOutput(NamedTuple):
    """One forward pass over a batch of observations (tensors on the agent's device)."""

    actions: torch.Tensor
    """(B,) int64: the action executed."""
    probs: torch.Tensor
    """(B, A): policy probabilities (PPO/A2C), softmax of the Q-values (DQN)."""
    q_values: torch.Tensor | None
    """(B, A) Q-values for value-based agents, else None."""
    value: torch.Tensor
    """(B,): V(s) for actor-critic agents, max_a Q(s, a) for value-based ones."""
    levels: torch.Tensor
    """(B, total_nodes) in [0, 1]: node levels of every displayed layer, concatenated."""


@contextlib.contextmanager
def _no_weight_init() -> Iterator[None]:
    """Skip SB3's orthogonal initialisation while loading: every parameter is overwritten by the
    checkpoint right after (``set_parameters(exact_match=True)``), and the QR decompositions of a
    NatureCNN cost over a second per checkpoint on a small CPU."""
    original = nn.init.orthogonal_
    nn.init.orthogonal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        nn.init.orthogonal_ = original


def _read_data(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("data"))


def detect_algo(path: Path) -> str:
    """Which SB3 algorithm saved ``path`` (from the archive's ``data``, without unpickling)."""
    data = _read_data(path)
    serial = data.get("policy_class", {})
    blob = base64.b64decode(serial.get(":serialized:", "")) if isinstance(serial, dict) else b""
    if b"qrdqn" in blob:
        return "QRDQN"
    if b"stable_baselines3.dqn" in blob or "exploration_rate" in data:
        return "DQN"
    if "clip_range" in data:
        return "PPO"
    if "n_steps" in data:
        return "A2C"
    raise GpurenderError(f"{path}: unsupported algorithm (gpurender renders PPO, A2C, DQN, QR-DQN)")


def _algo_class(algo: str):
    if algo == "QRDQN":
        try:
            from sb3_contrib import QRDQN
        except ImportError:
            raise DependencyMissing("sb3-contrib", "contrib", "this checkpoint is QR-DQN") from None
        return QRDQN
    import stable_baselines3 as sb3

    return getattr(sb3, algo)


def _weight_layers(module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(weight layer, module whose output is the layer's activation) in forward order."""
    mods = [m for m in module.modules() if not list(m.children())]
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d | nn.Linear):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            out.append((m, nxt if isinstance(nxt, _ACTIVATIONS) else m))
    return out


def _group_matrix(w: np.ndarray, out_nodes: int, in_nodes: int) -> np.ndarray:
    """Mean |w| between equal contiguous groups of output and input units -> (out_nodes, in_nodes),
    rescaled within the layer pair to [0.15, 1] (weakest to strongest group connection)."""
    out_groups = np.array_split(np.arange(w.shape[0]), out_nodes)
    in_groups = np.array_split(np.arange(w.shape[1]), in_nodes)
    m = np.array([[w[np.ix_(o, i)].mean() for i in in_groups] for o in out_groups], np.float32)
    span = float(m.max() - m.min())
    rel = (m - m.min()) / span if span > 1e-12 else np.ones_like(m)
    return (0.15 + 0.85 * rel).astype(np.float32)


class Agent:
    """An SB3 Atari agent ready for batched, instrumented inference."""

    def __init__(self, path: str | Path, device: str | torch.device = "auto", stochastic: bool = False) -> None:
        self.path = Path(path)
        check_zip(self.path)
        self.algo = detect_algo(self.path)
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.stochastic = stochastic
        cls = _algo_class(self.algo)
        try:
            with _no_weight_init():
                self.model = cls.load(self.path, device=self.device)
        except Exception as exc:  # SB3 raises many types for a bad archive
            reason = f"{type(exc).__name__}: {exc}"
            raise GpurenderError(f"{self.path}: cannot load as an SB3 {self.algo} model ({reason})") from None
        self.policy = self.model.policy.eval()
        self._check_spaces()
        self.n_actions = int(self.model.action_space.n)
        lr = self.model.lr_schedule(1.0)
        self.learning_rate = float(lr)
        self.num_timesteps = int(self.model.num_timesteps)
        self._build_taps()

    def _check_spaces(self) -> None:
        from gymnasium import spaces

        obs, act = self.model.observation_space, self.model.action_space
        if not isinstance(obs, spaces.Box) or obs.dtype != np.uint8 or tuple(obs.shape) != (4, 84, 84):
            raise GpurenderError(
                f"{self.path}: not an Atari image agent (observation space {obs}, expected 4x84x84 uint8 "
                "frames from make_atari_env + VecFrameStack(4))"
            )
        if not isinstance(act, spaces.Discrete) or not 2 <= act.n <= MAX_ACTIONS:
            raise GpurenderError(f"{self.path}: action space {act} is not a discrete Atari action set")

    # -- network description ---------------------------------------------------------------

    def _trunk_and_head(self) -> tuple[list[nn.Module], nn.Module]:
        p = self.policy
        if self.algo in ("PPO", "A2C"):
            extractor = p.features_extractor if p.share_features_extractor else p.pi_features_extractor
            return [extractor, p.mlp_extractor.policy_net], p.action_net
        net = p.quantile_net if self.algo == "QRDQN" else p.q_net
        inner = net.quantile_net if self.algo == "QRDQN" else net.q_net
        layers = list(inner)
        head = next(m for m in reversed(layers) if isinstance(m, nn.Linear))
        return [net.features_extractor, inner], head

    def _build_taps(self) -> None:
        trunk, head = self._trunk_and_head()
        pairs = [pair for mod in trunk for pair in _weight_layers(mod) if pair[0] is not head]
        self._tap_modules = [tap for _, tap in pairs]
        # activations that can be negative are summarised by their magnitude
        self._signed = [not isinstance(tap, nn.ReLU | nn.Sigmoid) for tap in self._tap_modules]
        self._taps: list[torch.Tensor | None] = [None] * len(pairs)
        for i, tap in enumerate(self._tap_modules):
            tap.register_forward_hook(self._hook(i))
        with torch.no_grad():
            self._forward_raw(torch.zeros((1, 4, 84, 84), dtype=torch.uint8, device=self.device))
        layers = [LayerInfo("Input", "input", (4, 84, 84), 4)]
        n_conv = n_dense = 0
        for (w, _), act in zip(pairs, self._taps, strict=True):
            shape = tuple(act.shape[1:])
            if isinstance(w, nn.Conv2d):
                n_conv += 1
                name, kind = f"Conv{n_conv}", "conv"
            else:
                n_dense += 1
                name, kind = f"Dense{n_dense}", "dense"
            layers.append(LayerInfo(name, kind, shape, min(shape[0], MAX_NODES)))
        if n_dense == 1:
            layers = [LayerInfo("Dense", "dense", x.shape, x.nodes) if x.kind == "dense" else x for x in layers]
        layers.append(LayerInfo("Output", "output", (self.n_actions,), self.n_actions))
        self.layers = layers
        self.edge_weights = self._edge_weights([w for w, _ in pairs] + [head])

    def _hook(self, i: int):
        def hook(_module: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self._taps[i] = out

        return hook

    def _edge_weights(self, weight_modules: list[nn.Module]) -> list[np.ndarray]:
        """Per pair of adjacent columns: (dst nodes, src nodes) mean |weight| between the groups."""
        mats = []
        for src, dst, mod in zip(self.layers[:-1], self.layers[1:], weight_modules, strict=True):
            w = mod.weight.detach().abs().float().cpu().numpy()
            if w.ndim == 4:  # conv: (out, in, kh, kw)
                w = w.mean(axis=(2, 3))
            elif w.shape[1] != src.units:  # dense after flatten: (out, C*H*W) -> (out, C)
                w = w.reshape(w.shape[0], src.units, -1).mean(axis=2)
            if self.algo == "QRDQN" and dst.kind == "output":  # (A * quantiles, in) -> (A, in)
                w = w.reshape(self.n_actions, -1, w.shape[1]).mean(axis=1)
            mats.append(_group_matrix(w, dst.nodes, src.nodes))
        return mats

    @property
    def node_counts(self) -> list[int]:
        return [layer.nodes for layer in self.layers]

    @property
    def info(self) -> AgentInfo:
        return AgentInfo(self.algo, self.n_actions, self.learning_rate, tuple(self.layers), tuple(self.edge_weights))

    # -- inference -----------------------------------------------------------------------------

    def _forward_raw(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """-> probs, q_values, value: exactly the ops of SB3's own methods."""
        p = self.policy
        if self.algo in ("PPO", "A2C"):
            features = p.extract_features(obs)
            if p.share_features_extractor:
                latent_pi, latent_vf = p.mlp_extractor(features)
            else:
                latent_pi = p.mlp_extractor.forward_actor(features[0])
                latent_vf = p.mlp_extractor.forward_critic(features[1])
            dist = p._get_action_dist_from_latent(latent_pi)
            return dist.distribution.probs, None, p.value_net(latent_vf).flatten()
        if self.algo == "QRDQN":
            q = p.quantile_net(obs).mean(dim=1)
        else:
            q = p.q_net(obs)
        return torch.softmax(q, dim=1), q, q.max(dim=1).values

    @torch.no_grad()
    def act(self, obs: torch.Tensor | np.ndarray) -> AgentOutput:
        """One forward over a batch of (B,4,84,84) uint8 observations."""
        obs_t = torch.as_tensor(obs, device=self.device)
        probs, q, value = self._forward_raw(obs_t)
        if not self.stochastic:
            actions = probs.argmax(dim=1)
        elif q is None:
            actions = torch.multinomial(probs, 1).squeeze(1)
        else:  # DQN's own exploration: epsilon-greedy at the checkpoint's exploration rate
            greedy = q.argmax(dim=1)
            rand = torch.randint(0, self.n_actions, greedy.shape, device=self.device)
            explore = torch.rand(greedy.shape, device=self.device) < float(self.model.exploration_rate)
            actions = torch.where(explore, rand, greedy)
        levels = self._node_means(obs_t, probs)
        return AgentOutput(actions, probs, q, value, levels)

    def _node_means(self, obs: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Raw node levels: per displayed node, the mean activation of the units it stands for.

        Input nodes are the 4 stacked frames (mean pixel / 255); hidden nodes the mean (of |a| for
        activations that can be negative) over their channel group and all spatial positions;
        output nodes the action probabilities.
        """
        cols = [obs.float().mean(dim=(2, 3)) / 255.0]
        for layer, act, signed in zip(self.layers[1:-1], self._taps, self._signed, strict=True):
            a = act.abs() if signed else act
            per_unit = a.flatten(2).mean(dim=2) if a.dim() > 2 else a
            cols.append(torch.stack([g.mean(dim=1) for g in per_unit.tensor_split(layer.nodes, dim=1)], dim=1))
        cols.append(probs)
        return torch.cat(cols, dim=1)


class LevelNormaliser:
    """Running per-layer maximum that maps raw node levels to [0, 1] brightness.

    Hidden and input layers are divided by the largest node level that layer has reached so far in
    this video (over all envs of the milestone), so brightness is stable and comparable within a
    video; output nodes (probabilities) are shown as they are.
    """

    def __init__(self, node_counts: list[int]) -> None:
        self.bounds = np.cumsum([0, *node_counts])
        self.running = torch.zeros(len(node_counts) - 1)

    def __call__(self, levels: torch.Tensor) -> torch.Tensor:
        out = levels.clone()
        if self.running.device != levels.device:
            self.running = self.running.to(levels.device)
        for i in range(len(self.bounds) - 2):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            self.running[i] = torch.maximum(self.running[i], levels[:, lo:hi].max())
            out[:, lo:hi] = levels[:, lo:hi] / self.running[i].clamp_min(1e-6)
        return out.clamp_(0.0, 1.0)
