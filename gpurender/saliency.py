"""Saliency maps: where in its 4x84x84 frame stack an agent looks when it acts and when it values.

Two methods; each gives an *actor* map and a *critic* map, 84x84 float32, per observation.

``perturbation`` -- Greydanus et al., "Visualizing and Understanding Atari Agents" (ICML 2018),
adapted from the paper's public code (``greydanus/visualize_atari``, ``saliency.py``:
``get_mask``, ``occlude``, ``score_frame``) to SB3's frame-stacked agents:

* **Perturbation.** For a centre ``(cy, cx)``: ``I' = I * (1 - M) + A(I) * M``, the observation
  blended with its Gaussian-blurred copy ``A(I)`` (sigma 3 px) under a Gaussian mask ``M``
  (sigma 5 px, peak 1 at the centre); the paper's ``occlude``. ``I`` is the network's input
  (``obs / 255``, as SB3 preprocesses it). *All four stacked frames* are perturbed with the same
  mask, each blurred on its own (in space; frames are never mixed). The paper's agent sees one
  80x80 frame and keeps its past in an LSTM state, which the paper leaves unperturbed; an SB3
  agent keeps its past in the stack, so perturbing the whole stack at a place asks what the
  agent takes from that place now and in the three frames before.
* **Mask.** ``M(y, x) = exp(-((y - cy)^2 + (x - cx)^2) / (2 * 5^2))``, separable; each 1-D factor
  is 0 where it falls under 1e-12, 37 px and more from the centre (:data:`MASK_FLOOR`). The
  paper's ``get_mask`` blurs a 5-pixel disc with ``scipy.ndimage.gaussian_filter(sigma=5)``
  (reflecting at the border) and rescales it to peak 1: a Gaussian of sigma ~5.04 in the
  interior, wider against the border.
* **Blur.** ``A`` is ``scipy.ndimage.gaussian_filter(sigma=3)`` of each frame, as in the paper
  (mode ``reflect``, truncated at 4 sigma: 25 taps), written as one 84x84 matrix ``K``
  (``A(I) = K I K^T``, :func:`gaussian_blur_matrix`) and computed once per observation; the
  paper recomputes it for every mask.
* **Grid.** Centres every 5 pixels, 0 to 80, on both axes: 17x17 = 289 perturbations per
  observation. The paper's ``range(0, 80, 5)`` on its 80x80 input scores 16x16 centres into a
  17x17 array whose last row and column stay zero.
* **Score.** ``S = 1/2 * ||pi(I) - pi(I')||^2`` where pi is the policy *logits* (``action_net``'s
  output, before the softmax) for PPO/A2C and the *Q-values* for DQN (QR-DQN: their mean over
  quantiles). The critic map is ``1/2 * (V(I) - V(I'))^2`` with V the value head for PPO/A2C and
  the greedy action's Q (``max_a Q``, the value the panel shows) for DQN. The paper scores its
  actor's logits and its critic's value in two separate passes of batch-1 forwards (one per
  mask: 2 x 257 per frame); here ONE forward of each perturbed batch gives both, and pi(I), V(I)
  come from one unperturbed forward per observation, shared by both maps and all 289 masks and
  run through the same code as the perturbed inputs.
* **Map.** The 17x17 scores are raw (units of logit^2 or value^2; the paper scales its maps by a
  hand-tuned per-game "fudge factor" when it draws them). :func:`upsample` interpolates them
  bilinearly to 84x84, each score at its centre pixel (rows and columns 81-83 take the last
  centre's value); the paper resizes its grid with ``scipy.misc.imresize`` (8-bit quantised, its
  zero 17th row and column included). Drawing upsamples the 84x84 map to the screen.
* **Batching.** Every perturbation of every observation of every milestone of one architecture
  goes through the network in large batched forwards on the agents' device, at most ``batch``
  perturbed inputs per forward (which bounds memory). Milestones are stacked into one forward
  (``torch.func.vmap`` over their weights, as :class:`~gpurender.agents.AgentStack` does) on
  CUDA, and run one after another on the CPU, where a 289-input batch already fills the cores
  (stacked, the CPU's grouped convolutions took twice as long).
* **First convolution.** For SB3's ``NatureCNN`` extractors the first convolution of the
  perturbed inputs is not run: it is linear, so ``conv1(I') = conv1(I) + conv1(M * D)`` with
  ``D = A(I) - I``, and because ``M`` is separable, ``conv1(M * D)`` for all 289 masks is one
  batched product, per output position, of the mask's values under the kernel taps with the
  per-tap products ``W . patch(D)`` (no perturbed image is built). Equal within float rounding;
  the tests check this path and the plain one against a one-mask-at-a-time implementation.

``gradient`` -- the input gradient (Simonyan et al. 2014; the "Jacobian" saliency the paper
compares with): ``|d pi_a(I) / dI|`` for the executed action ``a`` (its logit; its Q-value for
DQN) and ``|d V(I) / dI|`` for the critic, ``I`` the network's input (``obs / 255``); reduced
over the four stacked frames by their maximum, then blurred by a Gaussian of sigma 2 px (the
same ``reflect`` filter), which removes the 4-pixel checkerboard that conv1's stride leaves in
raw gradients. One forward and ONE backward per step for every observation of every milestone:
the batch is doubled and the first copy's actor objective and the second copy's critic objective
are summed, so a single backward gives both maps.

:class:`SaliencyComputer` is the API: ``SaliencyComputer(agents, method).maps(obs, actions)``.
It knows nothing of drawing; it runs on the agents' device and returns numpy maps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpurender.agents import Agent, _state_tensors, feature_extractors, policy_heads, stack_key
from gpurender.errors import GpurenderError

METHODS = ("perturbation", "gradient")
"""The saliency methods: ``perturbation`` (Greydanus et al. 2018) and ``gradient``."""
SIZE = 84
"""Observation height and width."""
STRIDE = 5
"""Pixels between perturbation centres."""
CENTRES = tuple(range(0, SIZE, STRIDE))
"""Centre rows (and columns) of the perturbations: 0, 5, ..., 80 (17)."""
GRID = len(CENTRES)
"""Centres per axis: the score grid is GRID x GRID."""
MASK_SIGMA = 5.0
"""sigma of the Gaussian perturbation mask, pixels."""
BLUR_SIGMA = 3.0
"""sigma of the blur that perturbed pixels are blended towards, pixels."""
GRADIENT_SIGMA = 2.0
"""sigma of the blur that smooths gradient maps, pixels."""
TRUNCATE = 4.0
"""Gaussian filters stop at this many sigma (``scipy.ndimage``'s default)."""
MASK_FLOOR = 1e-12
"""Mask profile values below this are 0 (37 px and more from the centre along an axis): they move
no float32 input by a representable amount, and their products would be subnormal numbers, which
x86 CPUs multiply ~10x slower."""


# -- fixed linear maps ------------------------------------------------------------------------


def gaussian_blur_matrix(n: int, sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """(n, n) float64 ``K`` with ``K @ v`` = ``scipy.ndimage.gaussian_filter1d(v, sigma,
    mode="reflect", truncate=truncate)``: normalised taps out to ``int(truncate*sigma + 0.5)``, the
    signal mirrored about its edges (``d c b a | a b c d | d c b a``)."""
    radius = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    k = np.zeros((n, n))
    for i in range(n):
        for t, w in zip(range(-radius, radius + 1), taps, strict=True):
            j = (i + t) % (2 * n)  # reflect: period 2n, the second half mirrored
            k[i, j if j < n else 2 * n - 1 - j] += w
    return k


def mask_profiles(n: int = SIZE, sigma: float = MASK_SIGMA) -> np.ndarray:
    """(GRID, n) float64: row ``i`` is the mask's 1-D profile about centre ``CENTRES[i]``; the mask
    of centre ``(i, j)`` is ``outer(profile[i], profile[j])``. Values under :data:`MASK_FLOOR`
    are 0."""
    pos = np.arange(n, dtype=np.float64)
    g = np.exp(-0.5 * ((pos[None, :] - np.asarray(CENTRES, np.float64)[:, None]) / sigma) ** 2)
    return np.where(g < MASK_FLOOR, 0.0, g)


def perturbation_masks() -> np.ndarray:
    """(GRID*GRID, 84, 84) float32: every mask, centre ``(CENTRES[i], CENTRES[j])`` at index
    ``i*GRID + j``."""
    g = mask_profiles()
    return np.einsum("iy,jx->ijyx", g, g).reshape(GRID * GRID, SIZE, SIZE).astype(np.float32)


def upsample_matrix(n: int = SIZE) -> np.ndarray:
    """(n, GRID) float64 ``U``: ``U @ S @ U.T`` interpolates a GRID x GRID score grid bilinearly
    to n x n, each score at its centre pixel, constant past the last centre."""
    u = np.zeros((n, GRID))
    for y in range(n):
        t = min(y / STRIDE, GRID - 1.0)
        i0 = min(int(t), GRID - 2)
        u[y, i0], u[y, i0 + 1] = 1.0 - (t - i0), t - i0
    return u


def upsample(grid: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(..., GRID, GRID) scores -> (..., 84, 84) maps (:func:`upsample_matrix`), numpy or torch."""
    if isinstance(grid, torch.Tensor):
        u = torch.as_tensor(upsample_matrix(), dtype=grid.dtype, device=grid.device)
        return u @ grid @ u.T
    u = upsample_matrix().astype(grid.dtype if grid.dtype.kind == "f" else np.float32)
    return u @ grid @ u.T


# -- types ------------------------------------------------------------------------------------


class SaliencyMaps(NamedTuple):
    """One step's maps, one per observation."""

    actor: np.ndarray
    """(..., 84, 84) float32: the policy's (logits', Q-values') saliency."""
    critic: np.ndarray
    """(..., 84, 84) float32: the value's saliency."""


class _Heads(nn.Module):
    """(logits or Q-values, value) of a hook-free copy of a policy, for ``functional_call``: from
    the preprocessed input, or (``from_conv1``) from each extractor's first-convolution output
    (pre-activation) for NatureCNN extractors."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.policy = copy.deepcopy(agent.policy)
        for m in self.policy.modules():  # the copied hooks would fill the original agent's taps
            m._forward_hooks.clear()
        self.algo = agent.algo

    def extractors(self) -> list[nn.Module]:
        return feature_extractors(self.policy, self.algo)

    def forward(self, x: torch.Tensor | list[torch.Tensor], from_conv1: bool = False) -> tuple[torch.Tensor, ...]:
        if from_conv1:
            feats = [ext.linear(ext.cnn[1:](h)) for ext, h in zip(self.extractors(), x, strict=True)]
        else:
            feats = [ext(x) for ext in self.extractors()]
        return policy_heads(self.policy, self.algo, feats)


def _conv1_factorable(extractor: nn.Module) -> bool:
    """Whether ``extractor`` is SB3's NatureCNN (``linear(cnn(x))``) whose first layer is a plain
    convolution (no padding, dilation or groups): the perturbation fast path."""
    from stable_baselines3.common.torch_layers import NatureCNN

    if type(extractor) is not NatureCNN or not isinstance(extractor.cnn, nn.Sequential):
        return False
    conv = extractor.cnn[0]
    return (isinstance(conv, nn.Conv2d) and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1)


class _Unit:
    """Agents of one architecture that share forwards: G weights, stacked for ``vmap`` or one
    agent alone (G = 1). Every tensor it takes and returns has a leading G axis."""

    def __init__(self, agents: list[Agent], heads: _Heads, stacked: bool) -> None:
        self.heads, self.g = heads, len(agents)
        if stacked:
            from torch.func import stack_module_state

            params, buffers = stack_module_state([a.policy for a in agents])
            state = {f"policy.{k}": v.detach() for k, v in {**params, **buffers}.items()}
        else:
            assert len(agents) == 1
            state = {f"policy.{k}": v.detach() for k, v in _state_tensors(agents[0].policy)}
        self.state, self.stacked = state, stacked
        names = {m: n for n, m in heads.policy.named_modules()}
        self.conv1: list[tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]] | None = []
        """Per extractor: (G, out, in, kh, kw) weight, (G, out) bias and the stride; None when an
        extractor is not factorable."""
        for ext in heads.extractors():
            if not _conv1_factorable(ext):
                self.conv1 = None
                break
            key = f"policy.{names[ext]}.cnn.0"
            w, b = state[f"{key}.weight"], state.get(f"{key}.bias")
            if not stacked:
                w, b = w[None], None if b is None else b[None]
            self.conv1.append((w, b, tuple(ext.cnn[0].stride)))

    def _call(self, x: torch.Tensor | list[torch.Tensor], from_conv1: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.func import functional_call, vmap

        if self.stacked:
            def one(state: dict, xi: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
                return functional_call(self.heads, state, (xi,), {"from_conv1": from_conv1})

            return vmap(one)(self.state, x)
        x0 = [h[0] for h in x] if from_conv1 else x[0]
        pi, v = functional_call(self.heads, self.state, (x0,), {"from_conv1": from_conv1})
        return pi[None], v[None]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, N, 4, 84, 84) preprocessed inputs -> (G, N, A) logits or Q-values, (G, N) values."""
        return self._call(x, from_conv1=False)

    def forward_from_conv1(self, h: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per extractor (G, N, C, H, W) first-convolution outputs -> as :meth:`forward`."""
        return self._call(h, from_conv1=True)


# -- the computer ------------------------------------------------------------------------------


class SaliencyComputer:
    """Saliency maps for the observations that milestones' agents act on, batched across them.

    ``agents``: every milestone's agent, one device; ``maps(obs, actions)`` takes their rows as
    the rollout lays them out (agent ``i`` owns rows ``i*E ... (i+1)*E - 1``). Agents of one
    architecture (:func:`~gpurender.agents.stack_key`) share batches; ``stack`` chooses whether
    they are stacked into one ``vmap`` forward (default: on CUDA) or run one after another.
    ``batch``: at most this many perturbed inputs per forward (default: 512 on the CPU, 8192 on
    CUDA), which bounds memory. ``fast``: use the factored first convolution where the network
    allows it (off: perturb the images and run the whole network, the plain way)."""

    def __init__(self, agents: Sequence[Agent], method: str = "perturbation", *, stack: bool | None = None,
                 batch: int | None = None, fast: bool = True) -> None:
        if method not in METHODS:
            raise GpurenderError(f"saliency method {method!r}: expected one of {', '.join(METHODS)}")
        if not agents:
            raise ValueError("SaliencyComputer needs at least one agent")
        devices = {a.device for a in agents}
        if len(devices) != 1:
            raise ValueError(f"SaliencyComputer needs agents on one device, got {sorted(map(str, devices))}")
        self.agents, self.method, self.device = list(agents), method, agents[0].device
        self.stack = self.device.type == "cuda" if stack is None else stack
        self.batch = batch or (8192 if self.device.type == "cuda" else 512)
        self.fast = fast
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(agents):
            groups.setdefault((stack_key(a), a._normalize_images), []).append(i)
        self._units: list[tuple[list[int], _Unit]] = []
        """(agent indices, unit): each agent in exactly one unit."""
        for idx in groups.values():
            heads = _Heads(agents[idx[0]])
            members = [idx] if self.stack and len(idx) > 1 else [[i] for i in idx]
            for m in members:
                self._units.append((m, _Unit([agents[i] for i in m], heads, stacked=len(m) > 1)))
        self._dev_consts: dict[str, torch.Tensor] = {}

    def _const(self, name: str) -> torch.Tensor:
        """Fixed matrices, made once on the device in float32."""
        if name not in self._dev_consts:
            make = {
                "blur": lambda: gaussian_blur_matrix(SIZE, BLUR_SIGMA),
                "grad_blur": lambda: gaussian_blur_matrix(SIZE, GRADIENT_SIGMA),
                "masks": perturbation_masks,
                "upsample": upsample_matrix,
            }[name]
            self._dev_consts[name] = torch.as_tensor(make(), dtype=torch.float32, device=self.device)
        return self._dev_consts[name]

    # -- public -------------------------------------------------------------------------------

    def maps(self, obs: np.ndarray | torch.Tensor, actions: np.ndarray | torch.Tensor | None = None) -> SaliencyMaps:
        """Actor and critic maps for ``obs``: (M*E, 4, 84, 84) or (M, E, 4, 84, 84) uint8 for the
        M agents -> two float32 arrays of shape ``obs.shape[:-3] + (84, 84)``. ``actions`` (same
        lead shape): the executed actions, which the gradient method differentiates (default: the
        greedy ones); the perturbation method does not use them. The gradient method needs
        autograd: call it outside ``torch.inference_mode`` (``no_grad`` is fine)."""
        lead = tuple(obs.shape[:-3])
        if self.method == "perturbation":
            actor, critic = self.perturbation_scores(obs, as_tensor=True)
            u = self._const("upsample")
            actor, critic = u @ actor @ u.T, u @ critic @ u.T
        else:
            actor, critic = self._gradient(obs, actions)
        both = torch.stack([actor, critic]).cpu().numpy()
        return SaliencyMaps(both[0].reshape(*lead, SIZE, SIZE), both[1].reshape(*lead, SIZE, SIZE))

    def perturbation_scores(self, obs: np.ndarray | torch.Tensor, as_tensor: bool = False) -> tuple[Any, Any]:
        """The raw perturbation scores before upsampling: actor and critic, each
        ``obs.shape[:-3] + (GRID, GRID)`` float32, ``[..., i, j]`` for centre
        ``(CENTRES[i], CENTRES[j])`` (row, column)."""
        lead = tuple(obs.shape[:-3])
        x = self._rows(obs)
        actor = torch.empty(x.shape[0], x.shape[1], GRID, GRID, device=self.device)
        critic = torch.empty_like(actor)
        with torch.no_grad():
            for idx, unit in self._units:
                xu = self._preprocess(x[idx], idx)
                if self.fast and unit.conv1 is not None:
                    a, c = self._scores_conv1(unit, xu)
                else:
                    a, c = self._scores_plain(unit, xu)
                actor[idx], critic[idx] = a, c
        actor, critic = actor.reshape(*lead, GRID, GRID), critic.reshape(*lead, GRID, GRID)
        if as_tensor:
            return actor, critic
        return actor.cpu().numpy(), critic.cpu().numpy()

    # -- internals ----------------------------------------------------------------------------

    def _rows(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(M, E, 4, 84, 84) on the device."""
        x = torch.as_tensor(obs, device=self.device)
        m = len(self.agents)
        if x.shape[-3:] != (4, SIZE, SIZE) or x.numel() % (m * 4 * SIZE * SIZE) or x.numel() == 0:
            raise ValueError(f"expected observations (M*E, 4, 84, 84) or (M, E, 4, 84, 84) for M = {m} agents, "
                             f"got {tuple(x.shape)}")
        return x.reshape(m, -1, 4, SIZE, SIZE)

    def _preprocess(self, obs: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """The network's float input (``Agent.preprocess``; one rule per unit)."""
        return self.agents[idx[0]].preprocess(obs)

    def _blocks(self, g: int, n_obs: int) -> list[tuple[slice, slice]]:
        """(observations, centre rows) per forward: whole observations when several fit in
        ``batch`` perturbations (over the unit's G agents), else some centre rows of one."""
        per_agent = max(GRID, self.batch // g)
        per_obs = GRID * GRID
        if per_agent >= per_obs:
            n = per_agent // per_obs
            return [(slice(e, min(e + n, n_obs)), slice(0, GRID)) for e in range(0, n_obs, n)]
        rows = per_agent // GRID
        return [(slice(e, e + 1), slice(i, min(i + rows, GRID))) for e in range(n_obs) for i in range(0, GRID, rows)]

    def _blur(self, x: torch.Tensor, name: str = "blur") -> torch.Tensor:
        k = self._const(name)
        return k @ x @ k.T

    def _scores_plain(self, unit: _Unit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, E, 4, 84, 84) inputs -> (G, E, GRID, GRID) actor and critic scores, every
        perturbed image built and run through the whole network."""
        g, e = x.shape[:2]
        pi0, v0 = unit.forward(x)
        d = self._blur(x) - x
        masks = self._const("masks").view(GRID, GRID, 1, SIZE, SIZE)
        actor = torch.empty(g, e, GRID, GRID, device=self.device)
        critic = torch.empty_like(actor)
        for es, rs in self._blocks(g, e):
            # (G, n_e, n_i, GRID, 4, 84, 84): x + M * D for each observation and centre
            xp = torch.addcmul(x[:, es, None, None], masks[None, None, rs], d[:, es, None, None])
            shape = xp.shape[:4]
            pi, v = unit.forward(xp.flatten(1, 3))
            self._score(pi.view(*shape, -1), v.view(shape), pi0[:, es], v0[:, es], actor[:, es, rs], critic[:, es, rs])
        return actor, critic

    def _scores_conv1(self, unit: _Unit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_scores_plain` with the first convolution factored (module docstring): per
        extractor, ``conv1(x + M_ij * D)[o, oy, ox] = conv1(x)[o, oy, ox] + sum_(dy,dx)
        g_i[s*oy + dy] * g_j[s*ox + dx] * sum_c W[o, c, dy, dx] * D[c, s*oy + dy, s*ox + dx]``: one
        batched product per output position of the (masks x kernel taps) profile products with
        the (kernel taps x channels) products W * patch(D). The perturbed first-layer outputs are
        laid out channels-last, which the next convolution runs fastest on (CPU, oneDNN)."""
        g, e = x.shape[:2]
        d = self._blur(x) - x
        base, parts = [], []
        for w, b, stride in unit.conv1:
            o, c, kh, kw = w.shape[1:]
            ho, wo = (SIZE - kh) // stride[0] + 1, (SIZE - kw) // stride[1] + 1
            # conv1(x) as a product with x's patches: (G, E, o, ho, wo)
            px = F.unfold(x.flatten(0, 1), (kh, kw), stride=stride).view(g, e, c * kh * kw, -1)
            h0 = torch.einsum("gok,gekl->geol", w.reshape(g, o, -1), px)
            if b is not None:
                h0 = h0 + b[:, None, :, None]
            base.append(h0.view(g, e, o, ho, wo))
            w_dgco = w.permute(3, 4, 0, 2, 1).reshape(kh * kw, g, c, o)
            parts.append((w_dgco, (kh, kw), stride, (ho, wo), self._profile_products(kh, kw, stride, ho, wo)))
        pi0, v0 = unit.forward_from_conv1(base)
        actor = torch.empty(g, e, GRID, GRID, device=self.device)
        critic = torch.empty_like(actor)
        cached: tuple[slice | None, list[torch.Tensor]] = (None, [])
        for es, rs in self._blocks(g, e):
            n, ks = es.stop - es.start, slice(rs.start * GRID, rs.stop * GRID)
            if cached[0] != es:  # W * patch(D) per extractor, reused across the centre rows of these observations
                cached = (es, [self._weighted_patches(d[:, es], w, k, st, hw) for w, k, st, hw, _ in parts])
            hs = []
            for (_, _, _, (ho, wo), gp), a, h0 in zip(parts, cached[1], base, strict=True):
                # sum over kernel taps of profile products x weighted patches: (ho*wo, n_k, G*n*o)
                delta = (gp[:, ks] @ a).view(ho, wo, ks.stop - ks.start, g, n, -1)
                o = delta.shape[-1]
                # plus conv1(x), into a (G, n, n_k, o, ho, wo) batch laid out channels-last
                h = torch.empty(g, n, ks.stop - ks.start, ho, wo, o, device=self.device).permute(0, 1, 2, 5, 3, 4)
                torch.add(h0[:, es, None], delta.permute(3, 4, 2, 5, 0, 1), out=h)
                hs.append(h.flatten(1, 2))
            shape = (g, n, rs.stop - rs.start, GRID)
            pi, v = unit.forward_from_conv1(hs)
            self._score(pi.view(*shape, -1), v.view(shape), pi0[:, es], v0[:, es], actor[:, es, rs], critic[:, es, rs])
        return actor, critic

    def _profile_products(self, kh: int, kw: int, stride: tuple[int, int], ho: int, wo: int) -> torch.Tensor:
        """(ho*wo, GRID*GRID, kh*kw): for output position (oy, ox), mask (i, j) and kernel tap
        (dy, dx), ``g_i[sy*oy + dy] * g_j[sx*ox + dx]`` — the mask under that tap."""
        name = f"profile_products_{kh}_{kw}_{stride[0]}_{stride[1]}"
        if name not in self._dev_consts:
            prof = mask_profiles()
            gy = np.stack([prof[:, stride[0] * r:stride[0] * r + kh] for r in range(ho)])  # (ho, GRID, kh)
            gx = np.stack([prof[:, stride[1] * q:stride[1] * q + kw] for q in range(wo)])  # (wo, GRID, kw)
            gp = np.einsum("riy,qjx->rqijyx", gy, gx).reshape(ho * wo, GRID * GRID, kh * kw)
            self._dev_consts[name] = torch.as_tensor(gp, dtype=torch.float32, device=self.device)
        return self._dev_consts[name]

    @staticmethod
    def _weighted_patches(d: torch.Tensor, w_dgco: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                          out_hw: tuple[int, int]) -> torch.Tensor:
        """(G, n, c, 84, 84) differences D -> (ho*wo, kh*kw, G*n*o): ``sum_c W[o, c, dy, dx] *
        D[c, s*oy + dy, s*ox + dx]`` per output position and kernel tap."""
        g, n, c = d.shape[:3]
        taps, o = w_dgco.shape[0], w_dgco.shape[-1]
        p = out_hw[0] * out_hw[1]
        pd = F.unfold(d.flatten(0, 1), kernel, stride=stride).view(g, n, c, taps, p)
        pd = pd.permute(4, 3, 0, 1, 2).contiguous()  # (p, taps, G, n, c)
        a = torch.empty(p, taps, g, n, o, device=d.device)
        torch.mul(pd[..., 0, None], w_dgco[None, :, :, None, 0], out=a)
        for ci in range(1, c):
            a.addcmul_(pd[..., ci, None], w_dgco[None, :, :, None, ci])
        return a.view(p, taps, -1)

    @staticmethod
    def _score(pi: torch.Tensor, v: torch.Tensor, pi0: torch.Tensor, v0: torch.Tensor,
               actor_out: torch.Tensor, critic_out: torch.Tensor) -> None:
        """``1/2 * ||pi(I) - pi(I')||^2`` and ``1/2 * (V(I) - V(I'))^2`` into the score views
        (G, n_e, n_i, GRID)."""
        actor_out.copy_(0.5 * (pi - pi0[:, :, None, None]).square().sum(dim=-1))
        critic_out.copy_(0.5 * (v - v0[:, :, None, None]).square())

    def _gradient(self, obs: np.ndarray | torch.Tensor,
                  actions: np.ndarray | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(M*E, 84, 84) actor and critic gradient maps: one forward of every unit (each input
        twice), one backward of the summed objectives."""
        x = self._rows(obs)
        m, e = x.shape[:2]
        acts = None if actions is None else torch.as_tensor(actions, device=self.device).reshape(m, e)
        inputs, total = [], 0
        with torch.enable_grad():
            for idx, unit in self._units:
                xu = self._preprocess(x[idx], idx)
                xin = torch.cat([xu, xu], dim=1).requires_grad_(True)
                pi, v = unit.forward(xin)
                a = pi[:, :e].argmax(dim=-1) if acts is None else acts[idx]
                total = total + pi[:, :e].gather(-1, a[..., None]).sum() + v[:, e:].sum()
                inputs.append(xin)
            grads = torch.autograd.grad(total, inputs)
        actor = torch.empty(m, e, SIZE, SIZE, device=self.device)
        critic = torch.empty_like(actor)
        for (idx, _), grad in zip(self._units, grads, strict=True):
            peak = grad.abs().amax(dim=2)  # over the 4 stacked frames
            actor[idx], critic[idx] = self._blur(peak[:, :e], "grad_blur"), self._blur(peak[:, e:], "grad_blur")
        return actor.flatten(0, 1), critic.flatten(0, 1)


__all__ = ["BLUR_SIGMA", "CENTRES", "GRADIENT_SIGMA", "GRID", "MASK_FLOOR", "MASK_SIGMA", "METHODS", "SIZE",
           "STRIDE", "SaliencyComputer", "SaliencyMaps", "gaussian_blur_matrix", "mask_profiles", "perturbation_masks",
           "upsample", "upsample_matrix"]
