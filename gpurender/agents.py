"""Load SB3 Atari checkpoints, describe their real network, and run one batched forward per step
that yields everything the panel shows: action, probabilities or Q-values, value, activations."""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gpurender.errors import DependencyMissing, GpurenderError
from gpurender.milestones import read_checkpoint
from gpurender.network import MAX_ACTIONS, MAX_NODES, AgentInfo, LayerInfo
from gpurender.protocol import StepOutputs

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


def _algo_of(data: dict, path: Path) -> str:
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


def _parse_data(raw: str, path: Path) -> dict:
    try:
        data = json.loads(raw)
    except ValueError:
        raise GpurenderError(f"{path}: not a Stable-Baselines3 checkpoint (its data is not JSON)") from None
    if not isinstance(data, dict):
        raise GpurenderError(f"{path}: not a Stable-Baselines3 checkpoint (its data is not a JSON object)")
    return data


def detect_algo(path: Path) -> str:
    """Which SB3 algorithm saved ``path`` (from the archive's ``data``, without unpickling)."""
    return _algo_of(_parse_data(read_checkpoint(path, policy=False)[0], path), path)


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


class _NoOptimizer:
    """Stands in for the policy's optimizer: rendering never trains, and constructing a torch
    optimizer imports ``torch._dynamo``, seconds of start-up on a small CPU."""

    def __init__(self, params: object, lr: object = None, **kwargs: object) -> None:
        del params, lr, kwargs


def load_policy(path: Path, algo: str, raw_data: str, raw_policy: bytes,
                device: torch.device) -> tuple[nn.Module, dict]:
    """The checkpoint's policy network with its saved weights, and its ``data`` (spaces,
    learning rate, ...), built the way ``<Algo>.load`` builds them but without the optimizer and
    its saved state, which rendering does not need (only ``data`` and ``policy.pth`` are read)."""
    from stable_baselines3.common.save_util import json_to_data
    from stable_baselines3.common.vec_env.patch_gym import _convert_space

    data = json_to_data(raw_data)
    for key in ("observation_space", "action_space", "policy_class"):
        if key not in data:
            raise GpurenderError(f"{path}: not a Stable-Baselines3 checkpoint (no {key} in its data)")
    obs_space, act_space = _convert_space(data["observation_space"]), _convert_space(data["action_space"])
    kwargs = dict(data.get("policy_kwargs") or {})
    kwargs.pop("device", None)
    if isinstance(kwargs.get("net_arch"), list) and kwargs["net_arch"] and isinstance(kwargs["net_arch"][0], dict):
        kwargs["net_arch"] = kwargs["net_arch"][0]  # SB3 < 1.8 layout, as BaseAlgorithm.load converts it
    kwargs["optimizer_class"] = _NoOptimizer
    kwargs.pop("optimizer_kwargs", None)
    if algo in ("PPO", "A2C"):
        kwargs["use_sde"] = bool(data.get("use_sde", False))
        # every parameter is overwritten by the checkpoint right after: skip the orthogonal
        # initialisation (QR decompositions: slow on a small CPU)
        kwargs["ortho_init"] = False
    lr = data.get("learning_rate", 0.0)
    data["learning_rate_now"] = float(lr(1.0) if callable(lr) else lr)
    policy = data["policy_class"](obs_space, act_space, lambda _: data["learning_rate_now"], **kwargs)
    state = torch.load(io.BytesIO(raw_policy), map_location=device, weights_only=True)
    policy.load_state_dict(state)  # strict: every saved tensor has its place and vice versa
    data["observation_space"], data["action_space"] = obs_space, act_space
    return policy.to(device).eval(), data


def feature_extractors(policy: nn.Module, algo: str) -> list[nn.Module]:
    """The policy's feature extractors in the order :func:`policy_heads` takes their features:
    PPO/A2C with a shared extractor, DQN, QR-DQN: one; PPO/A2C with separate ones: actor, critic."""
    if algo in ("PPO", "A2C"):
        if policy.share_features_extractor:
            return [policy.features_extractor]
        return [policy.pi_features_extractor, policy.vf_features_extractor]
    return [(policy.quantile_net if algo == "QRDQN" else policy.q_net).features_extractor]


def policy_heads(policy: nn.Module, algo: str, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (B, actions) logits (PPO/A2C) or Q-values (DQN; QR-DQN: the mean over quantiles), and
    the (B,) value (DQN: the greedy action's Q), from :func:`feature_extractors`' outputs: the ops
    of SB3's own ``forward_actor`` / ``action_net`` / ``value_net``, ``QNetwork.forward``,
    ``QuantileNetwork.forward``."""
    if algo in ("PPO", "A2C"):
        if policy.share_features_extractor:
            latent_pi, latent_vf = policy.mlp_extractor(features[0])
        else:
            latent_pi = policy.mlp_extractor.forward_actor(features[0])
            latent_vf = policy.mlp_extractor.forward_critic(features[1])
        return policy.action_net(latent_pi), policy.value_net(latent_vf).flatten()
    if algo == "QRDQN":  # QuantileNetwork.forward, then the mean over quantiles
        net = policy.quantile_net
        q = net.quantile_net(features[0]).view(-1, net.n_quantiles, int(net.action_space.n)).mean(dim=1)
    else:  # QNetwork.forward
        q = policy.q_net.q_net(features[0])
    return q, q.max(dim=1).values


class Agent:
    """An SB3 Atari agent ready for batched, instrumented inference."""

    def __init__(self, path: str | Path, device: str | torch.device = "auto", stochastic: bool = False,
                 members: tuple[str, bytes] | None = None) -> None:
        """``members``: :func:`read_checkpoint`'s result when the caller already read the archive."""
        self.path = Path(path)
        raw_data, raw_policy = members if members is not None else read_checkpoint(self.path)
        self.algo = _algo_of(_parse_data(raw_data, self.path), self.path)
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.stochastic = stochastic
        _algo_class(self.algo)  # a clear error if QR-DQN's package is missing
        try:
            self.policy, data = load_policy(self.path, self.algo, raw_data, raw_policy, self.device)
        except GpurenderError:
            raise
        except Exception as exc:  # SB3 and torch raise many types for a bad archive
            reason = f"{type(exc).__name__}: {exc}"
            raise GpurenderError(f"{self.path}: cannot load as an SB3 {self.algo} model ({reason})") from None
        self.observation_space, self.action_space = data["observation_space"], data["action_space"]
        self._check_spaces()
        from stable_baselines3.common.preprocessing import is_image_space

        self._normalize_images = bool(self.policy.normalize_images) and is_image_space(self.observation_space)
        self.n_actions = int(self.action_space.n)
        self.learning_rate = data["learning_rate_now"]
        self.num_timesteps = int(data.get("num_timesteps", 0))
        self.exploration_rate = float(data.get("exploration_rate", 0.0))
        self._weights: tuple[torch.Tensor, ...] | None = None
        """The policy's parameters and buffers in :func:`_state_tensors` order (made at first use)."""
        self._graphs: dict[tuple, _Unoptimised] = {}
        """This agent's traced forwards by observation shape, dtype and device."""
        self._build_taps()

    @functools.cached_property
    def model(self):
        """The whole SB3 model as ``<Algo>.load`` gives it (optimizer included): for
        ``evaluate_policy`` and for checking :meth:`act` against SB3 itself. Not used to render."""
        return _algo_class(self.algo).load(self.path, device=self.device)

    def _check_spaces(self) -> None:
        from gymnasium import spaces

        obs, act = self.observation_space, self.action_space
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

    def twin(self) -> Agent:
        """An independent copy (own modules, own activation taps) of this agent."""
        twin = copy.deepcopy(self)
        for i, tap in enumerate(twin._tap_modules):
            tap._forward_hooks.clear()  # the copied hooks still fill the original's taps
            tap.register_forward_hook(twin._hook(i))
        return twin

    def __getstate__(self) -> dict:
        """What a copy takes: not the SB3 model, the weights list or the traced graphs (the copy
        has its own weights; it finds the same graphs again)."""
        state = self.__dict__.copy()
        state.pop("model", None)
        state["_weights"], state["_graphs"] = None, {}
        return state

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

    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """The network's float input, as SB3's ``preprocess_obs`` makes it for these image spaces
        (``obs.float() / 255``); a float ``obs`` (a perturbed image, in pixel units) is scaled the
        same way."""
        return obs.float() / 255.0 if self._normalize_images else obs.float()

    def _forward_raw(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """-> probs, q_values, value: the ops of SB3's own methods (equal within float rounding).

        The observation is preprocessed once, as SB3's ``preprocess_obs`` does for these image
        spaces (``obs.float() / 255``), and fed to the feature extractors directly: SB3's own
        ``extract_features`` re-checks the space in Python on every call (a quarter of a batch-1
        CNN forward on a small CPU)."""
        x = self.preprocess(obs)
        pi, value = policy_heads(self.policy, self.algo, [f(x) for f in feature_extractors(self.policy, self.algo)])
        # SB3's CategoricalDistribution is Categorical(logits=action_net(latent)); its probs
        # are the softmax of those logits (without building and validating a distribution)
        return torch.softmax(pi, dim=1), (None if self.algo in ("PPO", "A2C") else pi), value

    @torch.no_grad()
    def act(self, obs: torch.Tensor | np.ndarray) -> StepOutputs:
        """One forward over a batch of (B,4,84,84) uint8 observations (raw node levels).

        On the CPU it runs as a traced graph (:func:`_traced_forward`): the same operations, so
        the same numbers bit for bit, without a Python call per module and per operation."""
        obs_t = torch.as_tensor(obs, device=self.device)
        run = self._forward_traced if self.device.type == "cpu" else self._forward_eager
        probs, q, value, levels = run(obs_t)
        return StepOutputs(self._select(probs, q, self.exploration_rate), value, probs, q, levels)

    def attribute(self, obs: torch.Tensor | np.ndarray) -> StepOutputs:
        """:meth:`act`, with the raw node levels replaced by raw attributions toward the executed
        action (``--network-view attribution``): per displayed node, the sum of activation x
        gradient of that action's logit (DQN: its Q-value; QR-DQN: its mean over quantiles) over
        the units and positions the node stands for; input nodes sum each frame's preprocessed
        pixels x their gradient. Signed: positive pushed toward the action, negative away.
        Output nodes keep the probabilities. Actions, probabilities, Q-values and value are
        :meth:`act`'s own, bit for bit (one more forward, eager, with autograd)."""
        out = self.act(obs)
        obs_t = torch.as_tensor(obs, device=self.device)
        with torch.enable_grad():
            x = self.preprocess(obs_t).requires_grad_(True)
            logits, _ = policy_heads(self.policy, self.algo, [f(x) for f in feature_extractors(self.policy, self.algo)])
            taps = list(self._taps)
            target = logits.gather(1, out.actions[:, None]).sum()  # rows are independent: one backward
            grads = torch.autograd.grad(target, [x, *taps])
        cols = [(x * grads[0]).detach().sum(dim=(2, 3))]
        for layer, act, grad in zip(self.layers[1:-1], taps, grads[1:], strict=True):
            per_unit = (act * grad).detach()
            per_unit = per_unit.flatten(2).sum(dim=2) if per_unit.dim() > 2 else per_unit
            cols.append(_per_node(per_unit, layer, "sum"))
        cols.append(out.probs)
        self._taps = [None] * len(self._taps)  # the graph's tensors: not kept past this call
        return out._replace(levels=torch.cat(cols, dim=1))

    def _forward_eager(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                             torch.Tensor]:
        """-> probs, q_values, value, raw node levels: :meth:`_forward_raw`, then the taps' means."""
        probs, q, value = self._forward_raw(obs)
        return probs, q, value, self._node_means(obs, probs)

    def _forward_traced(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                              torch.Tensor]:
        """:meth:`_forward_eager` as the graph traced for this architecture and batch shape, fed
        this agent's own weights."""
        key = (obs.shape, obs.dtype, obs.device)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _traced_forward(self, obs)
        if self._weights is None:
            self._weights = tuple(t for _, t in _state_tensors(self.policy))
        out = graph(obs, *self._weights)
        return out[0], (out[3] if len(out) > 3 else None), out[1], out[2]

    def _select(self, probs: torch.Tensor, q: torch.Tensor | None, exploration: float | torch.Tensor) -> torch.Tensor:
        """The executed actions: the most likely, or sampled as the algorithm explores
        (``exploration``: DQN's epsilon, a float or one per row)."""
        if not self.stochastic:
            return probs.argmax(dim=-1)
        if q is None:
            return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
        greedy = q.argmax(dim=-1)  # DQN's own exploration: epsilon-greedy at the checkpoint's rate
        rand = torch.randint(0, self.n_actions, greedy.shape, device=self.device)
        explore = torch.rand(greedy.shape, device=self.device) < exploration
        return torch.where(explore, rand, greedy)

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
            cols.append(_per_node(per_unit, layer, "mean"))
        cols.append(probs)
        return torch.cat(cols, dim=1)


def _per_node(per_unit: torch.Tensor, layer: LayerInfo, reduce: str) -> torch.Tensor:
    """(B, units) -> (B, nodes): the ``reduce`` ("mean" or "sum") of each node's equal,
    contiguous group of units (the first groups one unit larger where they do not divide)."""
    units = layer.units  # per_unit.shape[1], as a constant (also while tracing)
    if units % layer.nodes == 0:  # equal groups: one reshape, one reduction
        return getattr(per_unit.view(per_unit.shape[0], layer.nodes, units // layer.nodes), reduce)(dim=2)
    return torch.stack([getattr(g, reduce)(dim=1) for g in per_unit.tensor_split(layer.nodes, dim=1)], dim=1)


def _state_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of ``module`` by name, in a fixed order."""
    return [*module.named_parameters(), *module.named_buffers()]


@contextlib.contextmanager
def _state_swapped(module: nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """``module`` computing with ``tensors`` in place of its parameters and buffers of those names."""
    saved = []
    for name, tensor in tensors.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        store = owner._parameters if attr in owner._parameters else owner._buffers
        saved.append((store, attr, store[attr]))
        store[attr] = tensor
    try:
        yield
    finally:
        for store, attr, tensor in reversed(saved):
            store[attr] = tensor


_TRACED: dict[tuple, _Unoptimised] = {}
"""Traced forwards by :func:`_trace_key`."""


def _trace_key(agent: Agent, obs: torch.Tensor) -> tuple:
    """Agents with equal keys compute the same operations on observations of this shape: the same
    module classes with the same settings (their ``repr``), parameter and buffer shapes, algorithm
    and taps."""
    policy = agent.policy
    state = tuple((name, tuple(t.shape), t.dtype) for name, t in _state_tensors(policy))
    modules = tuple(type(m) for m in policy.modules())
    return (agent.algo, modules, repr(policy), state, agent._normalize_images, tuple(agent._signed),
            tuple(agent.node_counts), tuple(obs.shape), obs.dtype, str(obs.device))


def _traced_forward(agent: Agent, obs: torch.Tensor) -> _Unoptimised:
    """``agent._forward_eager`` traced once per :func:`_trace_key` (every milestone of one
    architecture shares it) into a graph ``(obs, *weights) -> (probs, value, levels[, q])`` whose
    weights are inputs (:func:`_state_tensors` order). It records the very operations the eager
    forward runs, so its outputs equal the eager forward's bit for bit (tests/test_agents.py
    checks); the graph runs unoptimised, as recorded (no fusion)."""
    key = _trace_key(agent, obs)
    graph = _TRACED.get(key)
    if graph is None:
        names = [name for name, _ in _state_tensors(agent.policy)]

        def forward(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with _state_swapped(agent.policy, dict(zip(names, weights, strict=True))):
                probs, q, value, levels = agent._forward_eager(x)
            return (probs, value, levels) if q is None else (probs, value, levels, q)

        weights = tuple(t for _, t in _state_tensors(agent.policy))
        with torch.jit.optimized_execution(False):
            graph = torch.jit.trace(forward, (obs, *weights), check_trace=False)
        agent._taps = [None] * len(agent._taps)  # the trace's values, not this agent's
        _TRACED[key] = graph = _Unoptimised(graph)
    return graph


class _Unoptimised:
    """A traced graph run exactly as recorded: TorchScript's graph optimisations (and any
    operator fusion they would bring) off for its calls."""

    def __init__(self, graph: torch.jit.ScriptFunction) -> None:
        self.graph = graph

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.jit.optimized_execution(False):
            return self.graph(*args)


def stack_key(agent: Agent) -> tuple:
    """Agents with equal keys can share one :class:`AgentStack` forward."""
    params = tuple((name, tuple(p.shape), p.dtype) for name, p in agent.policy.named_parameters())
    buffers = tuple((name, tuple(b.shape), b.dtype) for name, b in agent.policy.named_buffers())
    return (agent.algo, type(agent.policy), agent.stochastic, str(agent.device), params, buffers)


class _Forward(nn.Module):
    """``Agent._forward_raw`` + node means as a module forward, for ``functional_call``."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.policy = agent.policy
        self._agent = [agent]  # not a submodule

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        agent = self._agent[0]
        probs, q, value = agent._forward_raw(obs)
        levels = agent._node_means(obs, probs)
        return (probs, value, levels) if q is None else (probs, value, levels, q)


class AgentStack:
    """Milestones of one architecture run as ONE forward: their weights stacked and one
    network's forward mapped over them (``torch.func.vmap``: a grouped convolution, batched
    matrix products). The outputs equal each agent's own :meth:`Agent.act` within float rounding;
    the actions of one forward per milestone are bit for bit those of SB3's own batch-1 forward,
    so the renderer stacks only where asked to (``RenderConfig.stack_forwards``; by default on
    CUDA, where a batch-1 forward is bound by kernel launches, not arithmetic)."""

    def __init__(self, agents: list[Agent]) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        keys = {stack_key(a) for a in agents}
        if len(keys) != 1:
            raise ValueError("an AgentStack needs agents of one algorithm and architecture")
        self.template = agents[0].twin()  # functional_call swaps weights into its modules
        params, buffers = stack_module_state([a.policy for a in agents])
        self._state = ({f"policy.{k}": v for k, v in params.items()}, {f"policy.{k}": v for k, v in buffers.items()})
        module = _Forward(self.template)

        def forward(p: dict, b: dict, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return functional_call(module, (p, b), (obs,))

        self._forward = vmap(forward)
        self._exploration = torch.tensor([a.exploration_rate for a in agents], device=agents[0].device)[:, None]

    @property
    def node_counts(self) -> list[int]:
        return self.template.node_counts

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> StepOutputs:
        """(M, B, 4, 84, 84) uint8, row m for agent m -> every field with a leading M axis."""
        out = self._forward(*self._state, obs)
        probs, value, levels = out[:3]
        q = out[3] if len(out) > 3 else None
        return StepOutputs(self.template._select(probs, q, self._exploration), value, probs, q, levels)
