"""Agents: the batched instrumented forward gives exactly what SB3's own methods give, the network
description is read from the real module, and non-Atari checkpoints fail with a clear reason."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gpurender.agents import Agent, AgentStack, _traced_forward, detect_algo
from gpurender.errors import GpurenderError
from gpurender.protocol import LevelNormaliser, StepColumns, StepOutputs

KINDS = ["ppo", "a2c", "ppo_separate", "dqn", "qrdqn"]
ALGO = {"ppo": "PPO", "a2c": "A2C", "ppo_separate": "PPO", "dqn": "DQN", "qrdqn": "QRDQN"}
B = 6
NATURE_CNN = [
    ("Input", "input", (4, 84, 84), "4x84x84"),
    ("Conv1", "conv", (32, 20, 20), "32@20x20"),
    ("Conv2", "conv", (64, 9, 9), "64@9x9"),
    ("Conv3", "conv", (64, 7, 7), "64@7x7"),
]


@pytest.fixture(scope="module")
def agents(request) -> dict[str, Agent]:
    """Each checkpoint loaded once for the module (loading is the slow part)."""
    cache: dict[str, Agent] = {}

    def get(kind: str) -> Agent:
        if kind not in cache:
            cache[kind] = Agent(request.getfixturevalue(f"{kind}_checkpoint"), device="cpu")
        return cache[kind]

    return get  # type: ignore[return-value]


@pytest.fixture
def obs() -> np.ndarray:
    return np.random.default_rng(42).integers(0, 256, (B, 4, 84, 84), dtype=np.uint8)


def _sb3_reference(agent: Agent, obs: np.ndarray) -> dict[str, torch.Tensor]:
    """What SB3's own policy methods return for ``obs``, on the model ``<Algo>.load`` builds
    (independent of gpurender's own, optimizer-free loading)."""
    p = agent.model.policy
    assert p is not agent.policy
    x = torch.as_tensor(obs)
    with torch.no_grad():
        if agent.algo in ("PPO", "A2C"):
            return {"probs": p.get_distribution(x).distribution.probs, "value": p.predict_values(x).flatten()}
        q = p.quantile_net(x).mean(dim=1) if agent.algo == "QRDQN" else p.q_net(x)
        return {"q_values": q, "value": q.max(dim=1).values, "probs": torch.softmax(q, dim=1)}


@pytest.mark.parametrize("kind", KINDS)
def test_detect_algo(kind, request):
    assert detect_algo(request.getfixturevalue(f"{kind}_checkpoint")) == ALGO[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_act_equals_sb3_policy(kind, agents, obs):
    agent = agents(kind)
    assert agent.algo == ALGO[kind] and agent.n_actions == 4 and agent.device == torch.device("cpu")
    out = agent.act(obs)
    assert isinstance(out, StepOutputs)
    ref = _sb3_reference(agent, obs)
    assert out.actions.shape == (B,) and out.actions.dtype == torch.int64
    assert out.probs.shape == (B, 4) and out.values.shape == (B,)
    torch.testing.assert_close(out.probs, ref["probs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.probs.sum(dim=1), torch.ones(B), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.values, ref["value"], atol=1e-5, rtol=0)
    if agent.algo in ("DQN", "QRDQN"):
        assert out.q_values is not None and out.q_values.shape == (B, 4)
        torch.testing.assert_close(out.q_values, ref["q_values"], atol=1e-5, rtol=0)
    else:
        assert out.q_values is None
    # the executed action is what SB3 itself would play, deterministically
    want, _ = agent.model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(out.actions.numpy(), want)


@pytest.mark.parametrize("kind", KINDS)
def test_act_accepts_tensor_and_numpy(kind, agents, obs):
    agent = agents(kind)
    a, b = agent.act(obs), agent.act(torch.as_tensor(obs))
    for x, y in zip(a, b, strict=True):
        if x is not None:
            torch.testing.assert_close(x, y, atol=0, rtol=0)


def _other_weights(agent: Agent, scale: float) -> Agent:
    """A second agent of the same architecture with different weights."""
    other = agent.twin()
    with torch.no_grad():
        for p in other.policy.parameters():
            p.mul_(scale)
    return other


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_forward_equals_each_agents_own(kind, agents, obs):
    """One vmapped forward over stacked weights gives every agent what its own act() gives
    (row m = agent m; no rows swapped: the agents' weights differ), and the per-milestone level
    normaliser of the stack matches one normaliser per agent, step after step."""
    a = agents(kind)
    group = [a, _other_weights(a, 1.1), _other_weights(a, 0.9)]
    stack = AgentStack(group)
    per_agent_norms = [LevelNormaliser(g.node_counts) for g in group]
    stacked_norm = LevelNormaliser(a.node_counts)
    rng = np.random.default_rng(7)
    for _step in range(3):
        x = rng.integers(0, 256, (len(group), B, 4, 84, 84), dtype=np.uint8)
        got = stack.act(torch.as_tensor(x))
        levels = stacked_norm(got.levels)
        for m, agent in enumerate(group):
            want = agent.act(x[m])
            for field in ("probs", "values", "levels", "q_values"):
                w = getattr(want, field)
                if w is None:
                    assert getattr(got, field) is None
                    continue
                torch.testing.assert_close(getattr(got, field)[m], w, atol=1e-5, rtol=1e-5,
                                           msg=lambda e, f=field: f"{f}: {e}")
            assert torch.equal(got.actions[m], want.actions)
            torch.testing.assert_close(levels[m], per_agent_norms[m](want.levels), atol=1e-5, rtol=0)
    assert not torch.allclose(got.probs[0], got.probs[1])  # the weights really differ


@pytest.mark.parametrize("kind", KINDS)
def test_traced_forward_is_the_eager_forward_bit_for_bit(kind, agents, obs):
    """On the CPU act() runs the graph traced once per architecture and fed each agent's own
    weights: every output equals the eager forward's exactly, for the agent and for another of
    its architecture with other weights (which shares the trace)."""
    agent = agents(kind)
    other = _other_weights(agent, 1.1)
    x = torch.as_tensor(obs)
    with torch.no_grad():
        for a in (agent, other):
            for got, want in zip(a._forward_traced(x), a._forward_eager(x), strict=True):
                assert (got is None) == (want is None)
                assert got is None or torch.equal(got, want)
        assert _traced_forward(agent, x) is _traced_forward(other, x)
        assert not torch.equal(agent._forward_traced(x)[0], other._forward_traced(x)[0])
        assert torch.equal(agent.act(x).levels, agent._forward_eager(x)[3])


def test_stack_refuses_mixed_architectures(agents):
    with pytest.raises(ValueError, match="architecture"):
        AgentStack([agents("ppo"), agents("dqn")])


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_per_env(kind, agents, obs):
    agent = agents(kind)
    batch = agent.act(obs)
    singles = [agent.act(obs[i : i + 1]) for i in range(B)]
    for field in ("probs", "values", "levels", "q_values"):
        got = getattr(batch, field)
        if got is None:
            continue
        torch.testing.assert_close(got, torch.cat([getattr(s, field) for s in singles]), atol=1e-5, rtol=0,
                                   msg=lambda m, f=field: f"{f}: {m}")
    # actions agree wherever the choice is not a numerical tie
    top2 = batch.probs.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4
    single_actions = torch.cat([s.actions for s in singles])
    assert torch.equal(batch.actions[clear], single_actions[clear])


@pytest.mark.parametrize("kind", ["ppo", "a2c", "dqn", "qrdqn"])
def test_layers_of_nature_cnn(kind, agents):
    agent = agents(kind)
    got = [(x.name, x.kind, x.shape, x.shape_text) for x in agent.layers]
    assert got == [*NATURE_CNN, ("Dense", "dense", (512,), "512"), ("Output", "output", (4,), "4")]
    assert agent.node_counts == [4, 8, 8, 8, 8, 4]


def test_layers_with_custom_net_arch(agents):
    """net_arch pi=[64] adds a 64-unit dense layer after NatureCNN's 512 (actor side is drawn)."""
    agent = agents("ppo_separate")
    got = [(x.name, x.kind, x.shape) for x in agent.layers]
    assert got == [*((n, k, s) for n, k, s, _ in NATURE_CNN), ("Dense1", "dense", (512,)),
                   ("Dense2", "dense", (64,)), ("Output", "output", (4,))]
    assert agent.node_counts == [4, 8, 8, 8, 8, 8, 4]


@pytest.mark.parametrize("kind", KINDS)
def test_edge_weights(kind, agents):
    agent = agents(kind)
    assert len(agent.edge_weights) == len(agent.layers) - 1
    for src, dst, w in zip(agent.layers[:-1], agent.layers[1:], agent.edge_weights, strict=True):
        assert w.shape == (dst.nodes, src.nodes), (src.name, dst.name)
        assert w.dtype == np.float32
        assert w.min() >= 0 and w.max() == pytest.approx(1.0)


def _span01(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def test_edge_weights_are_the_real_weights(agents):
    """Conv1's 32x4 kernels grouped into 8 nodes (4 channels each): the mean |w| of each group,
    up to the increasing affine rescaling the diagram applies within a layer pair."""
    agent = agents("ppo")
    conv1 = agent.policy.features_extractor.cnn[0]
    w = conv1.weight.detach().abs().mean(dim=(2, 3)).numpy()  # (32 out, 4 in)
    want = w.reshape(8, 4, 4).mean(axis=1)
    np.testing.assert_allclose(_span01(agent.edge_weights[0]), _span01(want), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_levels(kind, agents, obs):
    agent = agents(kind)
    out = agent.act(obs)
    total = sum(agent.node_counts)
    assert out.levels.shape == (B, total)
    # input nodes: mean pixel of each stacked frame / 255; output nodes: the probabilities
    torch.testing.assert_close(out.levels[:, :4], torch.as_tensor(obs).float().mean(dim=(2, 3)) / 255)
    torch.testing.assert_close(out.levels[:, -4:], out.probs)
    norm = LevelNormaliser(agent.node_counts)
    for scale in (1.0, 0.5, 3.0):
        shown = norm(out.levels * scale)
        assert shown.shape == out.levels.shape
        assert float(shown.min()) >= 0.0 and float(shown.max()) <= 1.0
    # after the running maximum saw 3x levels, the plain levels show at about a third
    shown = norm(out.levels)
    hidden = slice(4, total - 4)
    assert float(shown[:, hidden].max()) == pytest.approx(1 / 3, rel=1e-4)


def test_conv1_levels_are_real_activations(agents, obs):
    """Conv1 node k = mean ReLU activation of channels 4k..4k+3 over the 20x20 map."""
    agent = agents("ppo")
    cnn = agent.policy.features_extractor.cnn
    with torch.no_grad():
        act = cnn[1](cnn[0](torch.as_tensor(obs).float() / 255.0))  # (B, 32, 20, 20)
    want = act.mean(dim=(2, 3)).reshape(B, 8, 4).mean(dim=2)
    torch.testing.assert_close(agent.act(obs).levels[:, 4:12], want, atol=1e-5, rtol=1e-5)


def test_stochastic_ppo_samples_the_policy(agents, obs):
    agent = agents("ppo")
    same = np.repeat(obs[:1], 64, axis=0)
    agent.stochastic = True
    try:
        torch.manual_seed(0)
        out = agent.act(same)
    finally:
        agent.stochastic = False
    # an untrained policy is near uniform: 64 draws from one observation are not all alike
    assert len(torch.unique(out.actions)) > 1
    assert torch.allclose(out.probs, out.probs[:1].expand_as(out.probs), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Checkpoints gpurender cannot draw


def test_cartpole_is_not_an_atari_agent(cartpole_checkpoint):
    with pytest.raises(GpurenderError, match="not an Atari image agent") as info:
        Agent(cartpole_checkpoint, device="cpu")
    assert str(cartpole_checkpoint) in str(info.value)


def test_pendulum_is_rejected(pendulum_checkpoint):
    # vector observations are reported first; the continuous action space would fail next
    with pytest.raises(GpurenderError, match="not an Atari image agent"):
        Agent(pendulum_checkpoint, device="cpu")


def test_continuous_actions_are_not_discrete(image_continuous_checkpoint):
    with pytest.raises(GpurenderError, match="not a discrete") as info:
        Agent(image_continuous_checkpoint, device="cpu")
    assert str(image_continuous_checkpoint) in str(info.value)


def test_truncated_zip(ppo_checkpoint, tmp_path: Path):
    bad = tmp_path / "pct_50.zip"
    bad.write_bytes(ppo_checkpoint.read_bytes()[:100_000])
    with pytest.raises(GpurenderError) as info:
        Agent(bad, device="cpu")
    assert str(bad) in str(info.value)


def test_corrupt_policy_weights(ppo_checkpoint, tmp_path: Path):
    """A well-formed zip whose policy.pth is garbage: SB3's load error becomes a GpurenderError."""
    bad = tmp_path / "pct_50.zip"
    with zipfile.ZipFile(ppo_checkpoint) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = b"not a torch file" if item.filename == "policy.pth" else src.read(item)
            dst.writestr(item.filename, data)
    with pytest.raises(GpurenderError, match="cannot load as an SB3 PPO model") as info:
        Agent(bad, device="cpu")
    assert str(bad) in str(info.value)


def test_missing_cuda_device_is_a_clear_error(ppo_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(GpurenderError, match="no CUDA GPU"):
        Agent(ppo_checkpoint, device="cuda")


@pytest.mark.parametrize("kind", KINDS)
def test_step_outputs_cross_the_process_boundary_unchanged(kind, agents, obs):
    """What the simulation packs is what the panel unpacks: every field of a real forward, also
    from rows padded to a wider agent's width, and a stack's rows agent by agent."""
    agent = agents(kind)
    out = LevelNormaliser(agent.node_counts).outputs(agent.act(obs))
    columns = StepColumns.of(agent.info)
    packed = out.pack().numpy()
    assert packed.shape == (B, columns.width)
    padded = np.pad(packed, ((0, 0), (0, 7)))
    for rows in (packed, padded):
        got = StepOutputs.unpack(rows, columns)
        np.testing.assert_array_equal(got.actions, out.actions.numpy())
        for field in ("values", "probs", "levels", "q_values"):
            want = getattr(out, field)
            if want is None:
                assert getattr(got, field) is None
            else:
                np.testing.assert_array_equal(getattr(got, field), want.numpy())
    stack = AgentStack([agent, _other_weights(agent, 1.1)])
    x = np.stack([obs, obs])
    stacked = StepOutputs.unpack(stack.act(torch.as_tensor(x)).pack().numpy(), columns)
    np.testing.assert_allclose(stacked.probs[:B], agent.act(obs).probs.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="columns"):
        StepOutputs.unpack(packed[:, :-1], columns)
