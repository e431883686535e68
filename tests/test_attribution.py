"""``--network-view attribution`` and ``--hud``.

* Each node's attribution equals activation x gradient of the executed action's logit (Q-value,
  QR-DQN's mean Q) computed here with autograd on SB3's own model (``<Algo>.load``, its own
  forward methods), for PPO (shared and separate extractors), DQN and QR-DQN; the actions,
  probabilities and values are those of the activations view, bit for bit.
* Rendered, the view changes nothing the agent did (traces equal but for the levels), each node
  is drawn in the colour of its attribution's sign, the legend says which view is on; the HUD line
  reads back from the decoded frames as this render's own figures, (the preview's: tests/test_preview.py).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _panel import HUD, PanelReader, demo_layout, luma
from _video import decode

from gpurender.agents import Agent
from gpurender.config import RenderConfig
from gpurender.demo import GAME, demo_checkpoints
from gpurender.pipeline import render
from gpurender.render.layout import (
    ATTRIBUTION_AGAINST,
    ATTRIBUTION_FOR,
    BACKGROUND,
    CYAN,
)
from gpurender.trace import read_trace, trace_path

TOL = 1e-4
"""Relative error allowed per layer: max |a - b| over max |b|."""


def _agent(request: pytest.FixtureRequest, kind: str) -> Agent:
    path = demo_checkpoints()[-1] if kind == "ppo" else request.getfixturevalue(f"{kind}_checkpoint")
    return Agent(path, device="cpu")


def sb3_attribution(agent: Agent, obs: np.ndarray, actions: np.ndarray) -> list[np.ndarray]:
    """Per displayed layer but the output, (B, nodes): activation x gradient of each row's
    ``actions`` logit, summed over the units (and positions) of each node's group, from SB3's own
    model: every activation module of the actor's path is hooked, the logit comes from SB3's own
    modules and methods (``extract_features``, ``action_net``; ``q_net``; ``quantile_net``). Input
    nodes: each frame's pixels x their gradient (SB3 scales pixels by 1/255 inside, which the
    product does not see)."""
    model = agent.model
    p = model.policy
    if agent.algo in ("PPO", "A2C"):
        path = [p.pi_features_extractor, p.mlp_extractor.policy_net]
    elif agent.algo == "QRDQN":
        path = [p.quantile_net.features_extractor, p.quantile_net.quantile_net]
    else:
        path = [p.q_net.features_extractor, p.q_net.q_net]
    kept: list[torch.Tensor] = []

    def keep(_m, _i, out: torch.Tensor) -> None:
        out.retain_grad()
        kept.append(out)

    hooks = [m.register_forward_hook(keep) for part in path for m in part.modules()
             if isinstance(m, torch.nn.ReLU | torch.nn.Tanh)]
    x = torch.tensor(obs, dtype=torch.float32, requires_grad=True)
    try:
        if agent.algo in ("PPO", "A2C"):  # get_distribution's ops up to the logits it hands to Categorical
            features = p.extract_features(x)  # (actor's, critic's) where they are not shared
            features = features[0] if isinstance(features, tuple) else features
            logits = p.action_net(p.mlp_extractor.forward_actor(features))
        elif agent.algo == "QRDQN":
            logits = p.quantile_net(x).mean(dim=1)
        else:
            logits = p.q_net(x)
    finally:
        for h in hooks:
            h.remove()
    logits[torch.arange(len(obs)), torch.as_tensor(actions)].sum().backward()
    layers = [(x * x.grad).sum(dim=(2, 3))] + [
        (a * a.grad).flatten(2).sum(dim=2) if a.dim() > 2 else a * a.grad for a in kept]
    assert len(layers) == len(agent.layers) - 1
    out = []
    for per_unit, layer in zip(layers, agent.layers[:-1], strict=True):
        groups = np.array_split(per_unit.detach().double().numpy(), layer.nodes, axis=1)
        out.append(np.stack([g.sum(axis=1) for g in groups], axis=1))
    return out


@pytest.mark.parametrize("kind", ["ppo", "ppo_separate", "dqn", "qrdqn"])
def test_attribution_is_activation_times_gradient_of_sb3s_model(request, kind, demo_stacks) -> None:
    agent = _agent(request, kind)
    got = agent.attribute(demo_stacks)
    plain = agent.act(demo_stacks)
    for field in ("actions", "values", "probs", "q_values"):
        a, b = getattr(got, field), getattr(plain, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    assert torch.equal(got.levels[:, -agent.n_actions :], plain.probs)  # output nodes: the probabilities
    levels = got.levels.double().numpy()
    start = 0
    reference = sb3_attribution(agent, demo_stacks, plain.actions.numpy())
    for layer, want in zip(agent.layers, reference, strict=False):
        mine = levels[:, start : start + layer.nodes]
        start += layer.nodes
        assert np.abs(want).max() > 0, f"{layer.name}: no attribution at all"
        err = np.abs(mine - want).max() / np.abs(want).max()
        assert err <= TOL, f"{kind} {layer.name}: relative error {err:.2e}"
    every = np.concatenate([w.ravel() for w in reference[1:]])
    assert (every > 0).any() and (every < 0).any()  # hidden nodes push both ways: the signs are compared too


def test_attribution_depends_on_the_action(demo_stacks) -> None:
    """Toward another action, other attributions: the view is about the action taken."""
    agent = Agent(demo_checkpoints()[-1], device="cpu")
    taken = agent.act(demo_stacks).actions.numpy()
    other = (taken + 1) % agent.n_actions
    a, b = (sb3_attribution(agent, demo_stacks, acts)[3] for acts in (taken, other))
    assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


# -- rendered ---------------------------------------------------------------------------------

CLIP = 1.0


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 100 % demo milestone rendered in both views with traces; the attribution one with the HUD."""
    root = tmp_path_factory.mktemp("attribution")
    out = {}
    for view in ("activations", "attribution"):
        cfg = RenderConfig(model_dir=tuple(demo_checkpoints()), game=GAME, milestones=("100",), output_dir=root / view,
                           clip_seconds=CLIP, seed=0, trace=True, network_view=view, hud=view == "attribution")
        report = render(cfg, progress=False)
        assert not report.failures and len(report.videos) == 1
        out[view] = report.videos[0].path
    return out


def _rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)


def test_the_view_changes_no_number_the_agent_computed(renders) -> None:
    act, att = (read_trace(trace_path(renders[v])) for v in ("activations", "attribution"))
    assert len(act) == len(att) == round(CLIP * 30)
    for a, b in zip(act, att, strict=True):
        assert {k: v for k, v in a.items() if k != "levels"} == {k: v for k, v in b.items() if k != "levels"}
    levels = np.array([r["levels"] for r in att])
    assert levels.min() < -0.2 and levels.max() > 0.5 and np.abs(levels).max() <= 1.0
    assert np.array([r["levels"] for r in act]).min() >= 0.0


def test_nodes_are_drawn_in_the_colour_of_their_sign(renders) -> None:
    layout = demo_layout("attribution", hud=True)
    frames = _rgb(renders["attribution"])
    levels = np.array([r["levels"] for r in read_trace(trace_path(renders["attribution"]))])
    n_out = layout.node_counts[-1]
    checked = {1: 0, -1: 0}
    for t in range(len(frames)):
        for row in layout.nodes.rows[: layout.n_nodes - n_out]:
            x, y, _r, slot = row[:4]
            level = levels[t, int(slot) - layout.slot_levels]
            if abs(level) < 0.2:
                continue
            r, g, _b = frames[t, round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2].mean(axis=(0, 1))
            sign = 1 if level > 0 else -1
            assert (g > r + 40) if sign > 0 else (r > g + 40), f"frame {t} node at {x:.0f},{y:.0f} level {level:.2f}"
            checked[sign] += 1
    assert checked[1] > 20 and checked[-1] > 5  # both colours were probed, many times


def test_legend_names_the_view(renders) -> None:
    for view, head in (("activations", "Network Activity (real activations)"),
                       ("attribution", "Attribution (grad x activation)")):
        layout = demo_layout(view, hud=view == "attribution")
        y = decode(renders[view]).frames[10][:540, :480].astype(np.float32)
        text, _ = PanelReader(layout).read(y, "net_head", CYAN, BACKGROUND)
        assert text == head
    layout = demo_layout("attribution", hud=True)
    rgb = _rgb(renders["attribution"])[10]
    swatches = [layout.rects.rows[i][:4] for i in range(len(layout.rects.rows))
                if tuple(layout.rects.rows[i][4:7]) in (ATTRIBUTION_FOR, ATTRIBUTION_AGAINST)]
    assert len(swatches) == 2
    for (x, y, w, h), colour in zip(swatches, (ATTRIBUTION_FOR, ATTRIBUTION_AGAINST), strict=True):
        drawn = rgb[int(y) + 2 : int(y + h) - 2, int(x) + 2 : int(x + w) - 2].mean(axis=(0, 1)) / 255
        assert np.abs(drawn - np.array(colour)).max() < 0.12


def test_hud_reads_back_as_the_renders_own_figures(renders) -> None:
    layout = demo_layout("attribution", hud=True)
    reader = PanelReader(layout)
    frames = decode(renders["attribution"]).frames
    read = []
    for t in range(len(frames)):
        text, _ = reader.read(frames[t][:540, :480].astype(np.float32), "hud", CYAN, BACKGROUND)
        m = HUD.fullmatch(text.strip())
        assert m, f"frame {t}: {text!r}"
        read.append(m.groups())
    # the first pass is drawn before any frame was: no frames/s, no drawing time yet; the model's
    # time is the step's own, measured before the frame is drawn
    assert read[0][0] == "--" and read[0][2] == "--" and float(read[0][1]) > 0
    last = [float(v) for v in read[-1]]
    assert all(v > 0 for v in last)
    # without --hud the line is empty
    plain = decode(renders["activations"]).frames[len(frames) - 1][:540, :480].astype(np.float32)
    assert reader.read(plain, "hud", CYAN, BACKGROUND)[0] == ""
    assert luma(CYAN) > luma(BACKGROUND)
