"""Saliency: the batched maps equal a plain one-perturbation-at-a-time implementation of the same
formula on SB3's own policy, gradient maps equal autograd on one observation, and batching across
milestones changes nothing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from gpurender.agents import Agent
from gpurender.demo import demo_checkpoints
from gpurender.errors import GpurenderError
from gpurender.saliency import (
    CENTRES,
    GRID,
    SaliencyComputer,
    gaussian_blur_matrix,
    upsample,
)

TOL = 1e-4
"""Relative error allowed: max |a - b| over a map, over max |b|."""


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def demo_agents() -> list[Agent]:
    return [Agent(p, device="cpu") for p in demo_checkpoints()]


@pytest.fixture(scope="module")
def obs(demo_stacks) -> np.ndarray:
    return demo_stacks


@pytest.fixture(scope="module")
def agents(demo_agents, request) -> dict[str, Agent]:
    """PPO: the trained demo milestone; DQN, PPO with separate actor and critic networks: the
    suite's small checkpoints."""
    return {"ppo": demo_agents[-1], "dqn": Agent(request.getfixturevalue("dqn_checkpoint"), device="cpu"),
            "ppo_separate": Agent(request.getfixturevalue("ppo_separate_checkpoint"), device="cpu")}


# -- the plain reference ----------------------------------------------------------------------


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(frame, sigma) of each frame (mode reflect, 4 sigma), float64."""
    k = 2 * int(4 * sigma + 0.5) + 1
    return np.stack([cv2.GaussianBlur(f, (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT) for f in frames])


def sb3_heads(agent: Agent, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(logits or Q-values, value) for network inputs ``x`` (pixels / 255), from the modules of
    SB3's own model (``<Algo>.load``, not gpurender's loading)."""
    p = agent.model.policy
    if agent.algo == "DQN":
        q = p.q_net.q_net(p.q_net.features_extractor(x))
        return q, q.max(dim=1).values
    latent_pi = p.mlp_extractor.forward_actor(p.pi_features_extractor(x))
    latent_vf = p.mlp_extractor.forward_critic(p.vf_features_extractor(x))
    return p.action_net(latent_pi), p.value_net(latent_vf).flatten()


def direct_scores(agent: Agent, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The formula written out: for every centre, one mask, one perturbed stack, one batch-1
    forward of SB3's model; 1/2 ||pi(I) - pi(I')||^2 and 1/2 (V(I) - V(I'))^2 -> (GRID, GRID)
    each. The mask and the perturbed stack are made in float64, with the mask's whole tail."""
    img = stack.astype(np.float64) / 255.0
    blurred = blur(img, 3.0)

    def heads(image: np.ndarray) -> tuple[torch.Tensor, ...]:
        return sb3_heads(agent, torch.as_tensor(image[None], dtype=torch.float32))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 forwards: a second thread only waits (for long, on a busy machine)
    try:
        return _direct(heads, img, blurred)
    finally:
        torch.set_num_threads(threads)


def _direct(heads, img: np.ndarray, blurred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:84, 0:84]
    with torch.no_grad():
        pi0, v0 = heads(img)
        actor, critic = np.zeros((GRID, GRID)), np.zeros((GRID, GRID))
        for i, cy in enumerate(CENTRES):
            for j, cx in enumerate(CENTRES):
                mask = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
                pi, v = heads(img * (1 - mask) + blurred * mask)
                actor[i, j] = 0.5 * float(((pi0 - pi) ** 2).sum())
                critic[i, j] = 0.5 * float((v0 - v) ** 2)
    return actor, critic


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [3.0, 2.0])
def test_blur_matrix_is_the_reflecting_gaussian_filter(sigma):
    img = np.random.default_rng(0).random((84, 84))
    k = gaussian_blur_matrix(84, sigma)
    np.testing.assert_allclose(k @ img @ k.T, blur(img[None], sigma)[0], atol=1e-12)


def test_upsample_puts_each_score_on_its_centre():
    grid = np.random.default_rng(1).random((2, GRID, GRID)).astype(np.float32)
    maps = upsample(grid)
    assert maps.shape == (2, 84, 84)
    np.testing.assert_allclose(maps[:, 0:81:5, 0:81:5], grid, rtol=1e-6)
    np.testing.assert_allclose(maps[:, 81:], np.repeat(maps[:, 80:81], 3, axis=1), rtol=1e-6)
    np.testing.assert_allclose(maps[:, 2, 0], 0.6 * grid[:, 0, 0] + 0.4 * grid[:, 1, 0], rtol=1e-6)
    torch.testing.assert_close(upsample(torch.from_numpy(grid)), torch.from_numpy(maps))


@pytest.mark.parametrize("kind", ["ppo", "dqn", "ppo_separate"])
def test_perturbation_equals_direct(kind, agents, obs):
    """Batched (factored first convolution, and the plain path) == one mask at a time, on real
    observations; whole 17x17 grids and the 84x84 maps, actor and critic."""
    agent = agents[kind]
    few = obs[:2] if kind == "ppo" else obs[2:]
    fast = SaliencyComputer([agent], "perturbation")
    plain = SaliencyComputer([agent], "perturbation", fast=False)
    assert (fast._units[0][1].conv1 is not None), "NatureCNN agents take the factored path"
    got_fast, got_plain = fast.perturbation_scores(few), plain.perturbation_scores(few)
    maps = fast.maps(few)
    for n, stack in enumerate(few):
        ref = direct_scores(agent, stack)
        assert ref[0].max() > 0 and ref[1].max() > 0
        for got in (got_fast, got_plain):
            assert rel_err(got[0][n], ref[0]) <= TOL and rel_err(got[1][n], ref[1]) <= TOL
        assert rel_err(maps.actor[n], upsample(ref[0])) <= TOL
        assert rel_err(maps.critic[n], upsample(ref[1])) <= TOL
    assert maps.actor.dtype == np.float32 and maps.actor.shape == (len(few), 84, 84)


@pytest.mark.parametrize("kind", ["ppo", "dqn", "ppo_separate"])
def test_gradient_equals_autograd(kind, agents, obs):
    """|d logit_a / dI| (a: the executed action, not necessarily the greedy one) and |d V / dI|,
    max over frames, blurred: equal to autograd through SB3's own model's modules, one observation
    at a time."""
    agent = agents[kind]
    actions = (agent.act(obs).actions.numpy() + np.array([1, 0, 2])) % agent.n_actions
    got = SaliencyComputer([agent], "gradient").maps(obs, actions)
    for n, stack in enumerate(obs):
        x = torch.as_tensor(stack[None] / 255.0, dtype=torch.float32).requires_grad_(True)
        pi, v = sb3_heads(agent, x)
        (g_actor,) = torch.autograd.grad(pi[0, actions[n]], x, retain_graph=True)
        (g_critic,) = torch.autograd.grad(v[0], x)
        for g, mine in ((g_actor, got.actor[n]), (g_critic, got.critic[n])):
            ref = blur(g[0].abs().amax(dim=0, keepdim=True).double().numpy(), 2.0)[0]
            assert rel_err(mine, ref) <= TOL


@pytest.mark.parametrize("method", ["perturbation", "gradient"])
def test_several_milestones_equal_each_alone(method, demo_agents, obs):
    """Four milestones in one call (stacked into one vmap forward, or one after another) give each
    milestone's maps as computed alone; rows are agent-major, (M*E, ...) or (M, E, ...)."""
    rows = np.concatenate([obs[:2]] * len(demo_agents))  # agent m: rows 2m, 2m + 1
    actions = np.tile([0, 3], len(demo_agents))
    alone = [SaliencyComputer([a], method).maps(obs[:2], actions[:2]) for a in demo_agents]
    for stack in (True, False):
        together = SaliencyComputer(demo_agents, method, stack=stack)
        got = together.maps(rows, actions)
        shaped = together.maps(rows.reshape(len(demo_agents), 2, 4, 84, 84), actions.reshape(-1, 2))
        assert got.actor.shape == (2 * len(demo_agents), 84, 84) and shaped.actor.shape == (len(demo_agents), 2, 84, 84)
        np.testing.assert_array_equal(shaped.actor.reshape(got.actor.shape), got.actor)
        for m, ref in enumerate(alone):
            for mine, theirs in ((got.actor, ref.actor), (got.critic, ref.critic)):
                assert rel_err(mine[2 * m:2 * m + 2], theirs) <= TOL


def test_mixed_architectures_and_small_batches(agents, obs):
    """A PPO and a DQN milestone in one computer (two groups), and forwards of 40 perturbations
    (blocks of a few centre rows): the same maps as each agent alone with the default batch."""
    pair = [agents["ppo"], agents["dqn"]]
    rows = np.concatenate([obs[:1], obs[1:2]])
    for fast in (True, False):
        got = SaliencyComputer(pair, "perturbation", batch=40, fast=fast).maps(rows)
        for m, agent in enumerate(pair):
            ref = SaliencyComputer([agent], "perturbation").maps(rows[m:m + 1])
            assert rel_err(got.actor[m], ref.actor[0]) <= TOL and rel_err(got.critic[m], ref.critic[0]) <= TOL


def test_bad_input_is_refused(agents, obs):
    with pytest.raises(GpurenderError, match="saliency method"):
        SaliencyComputer([agents["ppo"]], "occlusion")
    two = SaliencyComputer([agents["ppo"], agents["dqn"]])
    with pytest.raises(ValueError, match="M = 2 agents"):
        two.maps(obs[:3])
