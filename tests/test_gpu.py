"""Checks that need a CUDA GPU / NVIDIA EGL; skipped with a reason elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpurender.agents import Agent

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")


@needs_cuda
@pytest.mark.parametrize("name", ["ppo_checkpoint", "dqn_checkpoint"])
def test_cuda_outputs_equal_sb3_on_the_same_device(name: str, request: pytest.FixtureRequest) -> None:
    agent = Agent(request.getfixturevalue(name), device="cuda")
    obs = torch.randint(0, 256, (16, 4, 84, 84), dtype=torch.uint8, device="cuda")
    out = agent.act(obs)
    assert out.actions.device.type == "cuda" and out.levels.device.type == "cuda"
    policy = agent.policy
    with torch.no_grad():
        if agent.algo == "DQN":
            q = policy.q_net(obs)
            torch.testing.assert_close(out.q_values, q, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.values, q.max(dim=1).values, atol=1e-5, rtol=0)
        else:
            probs = policy.get_distribution(obs).distribution.probs
            torch.testing.assert_close(out.probs, probs, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.values, policy.predict_values(obs).flatten(), atol=1e-5, rtol=0)
    # batched == per-env on the GPU too
    for i in (0, 7, 15):
        single = agent.act(obs[i : i + 1])
        torch.testing.assert_close(single.probs[0], out.probs[i], atol=1e-5, rtol=0)


@needs_cuda  # (also keeps this process free of a second EGL context where the preview tests run)
def test_nvidia_egl_renders_the_game_panel_exactly() -> None:
    from gpurender.agents import LayerInfo
    from gpurender.render import FrameRenderer, PanelSpec

    try:
        renderer = FrameRenderer(max_tiles=4)
    except Exception as exc:  # no EGL at all
        pytest.skip(f"no EGL context: {exc}")
    with renderer:
        if "NVIDIA" not in renderer.renderer.upper():
            pytest.skip(f"renderer is {renderer.renderer}, not the NVIDIA driver")
        layers = (LayerInfo("Input", "input", (4, 84, 84), 4), LayerInfo("Dense", "dense", (512,), 8),
                  LayerInfo("Output", "output", (4,), 4))
        spec = PanelSpec("BREAKOUT", "PPO", ("NOOP", "FIRE", "RIGHT", "LEFT"), layers, "50%", True, 2.5e-4)
        layout = renderer.layout(spec)
        rng = np.random.default_rng(0)
        values = rng.random((2, layout.n_values)).astype(np.float32)
        values[:, 0] = 1
        chars = np.tile(layout.static_chars(spec), (2, 1))
        screens = rng.integers(0, 256, (2, 210, 160, 3), dtype=np.uint8)
        renderer.begin()
        renderer.draw(spec, values, chars, screens)
        rgb = renderer.read_rgb(2)
        ys = ((np.arange(540) + 0.5) * 210 / 540).astype(int)
        xs = ((np.arange(480) + 0.5) * 160 / 480).astype(int)
        for k in range(2):
            np.testing.assert_array_equal(rgb[k, :, 480:], screens[k][ys][:, xs])
