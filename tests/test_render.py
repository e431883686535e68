"""Drawing: golden frames on llvmpipe, pixel probes of what the panel must show, the GPU I420 pass
against a numpy BT.601 conversion, and the whole pipeline through its Python API."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from _video import decode
from conftest import compare_golden
from PIL import Image

from gpurender.agents import MAX_ACTIONS, Agent, LayerInfo
from gpurender.config import RenderConfig
from gpurender.games import action_meanings, resolve_game
from gpurender.render import FrameRenderer, PanelSpec
from gpurender.render.layout import (
    BACKGROUND,
    BAR,
    EDGES_PER_NODE,
    FRAME_H,
    FRAME_W,
    HILITE,
    HISTORY_ACTIONS,
    HISTORY_SCORES,
    MODE_HEIGHT,
    MODE_PALETTE,
    PALETTE,
    PANEL_W,
    SLOT_ACTION,
    SLOT_PROBS,
    YELLOW,
    strongest_inputs,
)

BREAKOUT = resolve_game("Breakout")
VENTURE = resolve_game("Venture")


# ---------------------------------------------------------------------------------------------
# Fixed, realistic inputs


@pytest.fixture(scope="module")
def _renderer():
    r = FrameRenderer(max_tiles=2)
    yield r
    r.ctx.__enter__()  # current for the releases; close() releases the context itself
    r.close()


@pytest.fixture
def renderer(_renderer: FrameRenderer):
    """The module's renderer with its context current: the pipeline's own renderer (another context
    in this process) leaves no context current when it is released."""
    with _renderer.ctx:
        yield _renderer


@pytest.fixture(scope="module")
def ppo_layers(ppo_checkpoint: Path) -> tuple[LayerInfo, ...]:
    """The real network columns of the conftest PPO checkpoint (NatureCNN + 4 Breakout actions)."""
    return tuple(Agent(ppo_checkpoint, device="cpu").layers)


@pytest.fixture(scope="module")
def breakout_screen() -> np.ndarray:
    pytest.importorskip("envpool")
    from gpurender.envs import make_atari

    env = make_atari(BREAKOUT, [0], "envpool")
    try:
        return env.reset().screens[0].copy()
    finally:
        env.close()


@dataclass
class Frame:
    """Everything one panel frame shows."""

    spec: PanelSpec
    action: int
    probs: np.ndarray
    levels: np.ndarray
    screen: np.ndarray
    q_values: np.ndarray | None = None
    hist_actions: np.ndarray | None = None
    """(HISTORY_ACTIONS,) recent executed actions, -1 = none yet."""
    hist_scores: np.ndarray | None = None
    """(HISTORY_SCORES,) recent episode scores scaled to [0, 1]: divided by ``score_peak``."""
    score_peak: float = 0.0
    """The largest episode score of the graph's frames (0: all are 0)."""
    edges: np.ndarray | None = None
    """(n_edges,) edge weight slots; None: :func:`_edges`."""

    def with_(self, **kw) -> Frame:
        return replace(self, **kw)


def _edges(renderer: FrameRenderer, spec: PanelSpec) -> np.ndarray:
    """Random group weights per layer pair, as the pipeline packs them (each node's strongest
    inputs only)."""
    layout = renderer.layout(spec)
    rng = np.random.default_rng(7)
    counts = layout.node_counts
    mats = [rng.uniform(0.15, 1.0, (d, s)).astype(np.float32) for s, d in itertools.pairwise(counts)]
    return layout.edge_values(mats)


def _history(n_actions: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A game 40 steps old: the strip partly filled; the episode score stepping up to 12."""
    actions = np.full(HISTORY_ACTIONS, -1.0, np.float32)
    actions[-40:] = np.random.default_rng(3).integers(0, n_actions, 40)
    scores = np.zeros(HISTORY_SCORES, np.float32)
    scores[-40:] = np.repeat([1.0, 4.0, 5.0, 8.0, 12.0], 8)
    return actions, scores / 12.0, 12.0


def ppo_frame(renderer: FrameRenderer, layers, screen: np.ndarray, action: int = 2) -> Frame:
    spec = PanelSpec(BREAKOUT.title, "PPO", action_meanings(BREAKOUT), layers, "50%", True, 2.5e-4)
    probs = np.array([0.05, 0.2, 0.6, 0.15], np.float32)
    n_nodes = renderer.layout(spec).n_nodes
    levels = np.linspace(0.0, 1.0, n_nodes, dtype=np.float32)
    levels[-len(probs):] = probs
    return Frame(spec, action, probs, levels, screen, None, *_history(len(probs)))


def dqn18_frame(renderer: FrameRenderer, layers, screen: np.ndarray, action: int = 17) -> Frame:
    """A DQN panel with the full 18-action set: the tall, small-font action list."""
    names = action_meanings(VENTURE)
    assert len(names) == MAX_ACTIONS
    layers = (*layers[:-1], LayerInfo("Output", "output", (len(names),), len(names)))
    spec = PanelSpec(VENTURE.title, "DQN", names, layers, "1,000,000 steps", False, 1e-4)
    q = np.round(np.linspace(-0.45, 1.25, len(names)), 3).astype(np.float32)
    probs = np.exp(q * 3) / np.exp(q * 3).sum()
    n_nodes = renderer.layout(spec).n_nodes
    levels = np.linspace(1.0, 0.0, n_nodes, dtype=np.float32)
    levels[-len(probs):] = probs
    return Frame(spec, action, probs.astype(np.float32), levels, screen, q, *_history(len(names)))


def _texts(renderer: FrameRenderer, f: Frame) -> dict[str, str]:
    layout = renderer.layout(f.spec)
    names = f.spec.action_names
    q_based = f.q_values is not None
    texts = {
        "frame": f"Frame:     {1234:>12,}",
        "progress": f"Progress:  {41.13:>11.2f}%",
        "reward": f"Ep Reward: {12.0:>12.1f}",
        "lives": f"Lives:     {5:>12d}",
        "value": f"{'Max Q:' if q_based else 'Value Est:':<11}{0.123:>12.3f}",
        "action": f"Action:    {names[f.action]:>12}",
        "score_head": layout.score_head(f.score_peak),
    }
    row = f.q_values if q_based else f.probs
    for a, name in enumerate(names):
        texts[f"act{a}"] = f"{name:<{layout.name_len}} {row[a]:7.3f}"
    return texts


def draw(renderer: FrameRenderer, frames: list[Frame], yuv: bool = False, tile0: int = 0):
    """Draw frames of one layout in one pass into tiles ``tile0...`` -> (n, 540, 960, 3) RGB of
    those tiles (and (n, 810, 960) I420)."""
    spec = frames[0].spec
    layout = renderer.layout(spec)
    values = np.concatenate([
        layout.values(np.array([f.action]), f.probs[None], f.levels[None],
                      (_edges(renderer, spec) if f.edges is None else f.edges)[None],
                      None if f.hist_actions is None else f.hist_actions[None],
                      None if f.hist_scores is None else f.hist_scores[None])
        for f in frames])
    # each frame's fixed text from its own spec (frames of one layout may be different milestones)
    chars = np.stack([layout.frame_chars(layout.static_chars(f.spec), _texts(renderer, f)) for f in frames])
    renderer.begin()
    renderer.draw(spec, values, chars, np.stack([f.screen for f in frames]), tile0=tile0)
    n = tile0 + len(frames)
    if yuv:
        return renderer.read_rgb(n)[tile0:].copy(), renderer.read_yuv(n)[tile0:].copy()
    return renderer.read_rgb(n)[tile0:].copy()


def _rgb255(color) -> np.ndarray:
    return np.array(color[:3]) * 255.0


def _over_background(color) -> np.ndarray:
    """``color`` (with alpha) blended over the cleared frame, as 0..255."""
    a = color[3]
    return a * _rgb255(color) + (1 - a) * _rgb255(BACKGROUND)


def _rects(renderer: FrameRenderer, spec: PanelSpec) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(geometry, colour a, colour b, binding) of every rectangle of the layout."""
    rows = np.asarray(renderer.layout(spec).rects.rows, np.float64).reshape(-1, 4, 4)
    return [tuple(r) for r in rows]


def _action_rows(renderer: FrameRenderer, spec: PanelSpec):
    """Per action: the highlight rectangle and the probability bar rectangle (x, y, w, h)."""
    rects = _rects(renderer, spec)
    rows = []
    for k in range(len(spec.action_names)):
        hl = [g for g, a, _, bind in rects
              if a[3] == 0 and bind[1] == SLOT_ACTION and bind[2] == k and bind[0] < 0]
        bar = [g for g, _, _, bind in rects if bind[0] == SLOT_PROBS + k]
        assert len(hl) == 1 and len(bar) == 1, f"action {k}: expected one highlight and one bar"
        rows.append((hl[0], bar[0]))
    return rows


# ---------------------------------------------------------------------------------------------
# Golden images (llvmpipe only)


def _require_llvmpipe(renderer: FrameRenderer) -> None:
    name = renderer.ctx.info["GL_RENDERER"]
    if "llvmpipe" not in name:
        pytest.skip(f"golden images are pinned to Mesa llvmpipe; this context is {name}")


def test_golden_ppo_breakout(renderer, ppo_layers, breakout_screen, check_golden):
    _require_llvmpipe(renderer)
    check_golden(draw(renderer, [ppo_frame(renderer, ppo_layers, breakout_screen)])[0], "ppo_breakout")


def test_golden_dqn_18_actions(renderer, ppo_layers, breakout_screen, check_golden):
    _require_llvmpipe(renderer)
    check_golden(draw(renderer, [dqn18_frame(renderer, ppo_layers, breakout_screen)])[0], "dqn_18_actions")


def test_golden_failure_writes_a_diff_and_a_pass_removes_it(tmp_path):
    frame = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    compare_golden(frame, "noise", update=True, folder=tmp_path)
    assert (tmp_path / "noise.png").is_file()
    moved = np.roll(frame, 1, axis=1)  # everything one pixel to the right
    with pytest.raises(AssertionError, match="--update-goldens"):
        compare_golden(moved, "noise", folder=tmp_path)
    written = sorted(p.name for p in (tmp_path / "_diff").iterdir())
    assert written == ["noise.png", "noise_golden_frame_diff.png"]
    side_by_side = np.asarray(Image.open(tmp_path / "_diff" / "noise_golden_frame_diff.png"))
    assert side_by_side.shape == (40, 180, 3)
    compare_golden(frame, "noise", folder=tmp_path)
    assert list((tmp_path / "_diff").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Pixel probes


@pytest.mark.parametrize("kind", ["ppo", "dqn18"])
def test_highlight_follows_the_executed_action(renderer, ppo_layers, breakout_screen, kind):
    make = ppo_frame if kind == "ppo" else dqn18_frame
    base = make(renderer, ppo_layers, breakout_screen)
    rows = _action_rows(renderer, base.spec)
    n = len(rows)
    hilite, plain = _over_background(HILITE), _rgb255(BACKGROUND)
    probs = np.full(n, 0.5, np.float32)  # every bar drawn, so every row's bar colour can be read
    for action in sorted({0, 1, n // 2, n - 1}):
        img = draw(renderer, [base.with_(action=action, probs=probs)])[0]
        for k, ((hx, hy, _, hh), (bx, by, _, bh)) in enumerate(rows):
            y = int(hy + hh / 2)
            bg = img[y, int(hx) + 1].astype(float)  # left of the text: only the row background
            np.testing.assert_allclose(bg, hilite if k == action else plain, atol=2,
                                       err_msg=f"row {k} background, action {action}")
            bar = img[int(by + bh / 2), int(bx) + 2].astype(float)
            np.testing.assert_allclose(bar, _rgb255(YELLOW if k == action else BAR), atol=2,
                                       err_msg=f"row {k} bar colour, action {action}")


def test_bar_length_is_the_probability(renderer, ppo_layers, breakout_screen):
    base = ppo_frame(renderer, ppo_layers, breakout_screen, action=3)
    rows = _action_rows(renderer, base.spec)
    for probs in ([0.0, 0.1, 0.65, 0.25], [1.0, 0.003, 0.5, 0.997]):
        p = np.array(probs, np.float32)
        img = draw(renderer, [base.with_(probs=p)])[0]
        for k, (_, (bx, by, bw, bh)) in enumerate(rows):
            line = img[int(by + bh / 2), int(bx) - 3 : int(bx + bw) + 3].astype(float)
            color = _rgb255(YELLOW if k == base.action else BAR)
            filled = int(np.all(np.abs(line - color) <= 2, axis=1).sum())
            assert abs(filled - p[k] * bw) <= 1, f"row {k}: {filled} bar pixels for p={p[k]} of {bw:.0f}"


def test_history_strip_and_reward_graph(renderer, ppo_layers, breakout_screen):
    f = ppo_frame(renderer, ppo_layers, breakout_screen)
    rects = _rects(renderer, f.spec)
    layout = renderer.layout(f.spec)
    cells = sorted((g for g, _, _, bind in rects if bind[3] == MODE_PALETTE), key=lambda g: g[0])
    bars = sorted((g for g, _, _, bind in rects if bind[3] == MODE_HEIGHT), key=lambda g: g[0])
    assert len(cells) == HISTORY_ACTIONS and len(bars) == HISTORY_SCORES
    assert all(g[0] + g[2] <= PANEL_W for g in cells + bars)
    img = draw(renderer, [f])[0]
    # the graph spans the strip above it, first pixel to last (both end with the newest frame;
    # left of the panel's right border)
    strip_row = img[int(cells[0][1] + cells[0][3] / 2), : PANEL_W - 1].astype(float)
    graph_row = img[int(bars[-1][1] + bars[-1][3]) - 1, : PANEL_W - 1].astype(float)  # every bar of height > 0
    lit_strip = np.flatnonzero(np.any(np.abs(strip_row - _rgb255(BACKGROUND)) > 8, axis=1))
    lit_graph = np.flatnonzero(np.any(np.abs(graph_row - _rgb255(BACKGROUND)) > 8, axis=1))
    assert lit_graph[-1] == lit_strip[-1], f"graph ends at x={lit_graph[-1]}, the action strip at x={lit_strip[-1]}"
    assert bars[0][0] == cells[0][0], "the graph starts where the action strip starts"
    for i, (x, y, w, h) in enumerate(cells):  # oldest left, newest right
        got = img[int(y + h / 2), int(x + w / 2)].astype(float)
        a = int(f.hist_actions[i])
        want = _rgb255(BACKGROUND) if a < 0 else _rgb255(PALETTE[a])
        np.testing.assert_allclose(got, want, atol=2, err_msg=f"history cell {i} (action {a})")
    for i, (x, y, w, h) in enumerate(bars):  # bottom-anchored, height = scaled reward
        column = img[int(y) : int(y + h), int(x + w / 2)].astype(float)
        lit = int(np.any(np.abs(column - _rgb255(BACKGROUND)) > 8, axis=1).sum())
        assert abs(lit - f.hist_scores[i] * h) <= 1, f"reward bar {i}: {lit} px for {f.hist_scores[i]:.2f} x {h}"
    assert layout.n_values == layout.slot_hist_scores + HISTORY_SCORES


@pytest.mark.parametrize("kind", ["ppo", "dqn18"])
def test_score_graph_heading_says_what_it_plots(renderer, ppo_layers, breakout_screen, kind):
    f = (ppo_frame if kind == "ppo" else dqn18_frame)(renderer, ppo_layers, breakout_screen)
    layout = renderer.layout(f.spec)
    length = layout.fields["score_head"].length
    for peak, shown in ((12.0, "max 12"), (0.0, "max 0"), (2.5, "max 2.5"), (864.0, "max 864")):
        head = layout.score_head(peak)
        assert head.startswith("Episode score") and head.endswith(shown) and len(head) <= length, head
    assert f"last {HISTORY_SCORES} frames" in layout.score_head(12.0) or kind == "dqn18"
    assert layout.score_head(1_234_567.0).endswith("max 1,234,567")


def test_game_panel_is_the_screen_scaled_nearest(renderer, ppo_layers):
    screen = np.random.default_rng(0).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    f = ppo_frame(renderer, ppo_layers, screen)
    img = draw(renderer, [f])[0]
    ys = np.floor((np.arange(FRAME_H) + 0.5) * 210 / FRAME_H).astype(int)
    xs = np.floor((np.arange(FRAME_W - PANEL_W) + 0.5) * 160 / (FRAME_W - PANEL_W)).astype(int)
    expected = screen[ys][:, xs]
    mismatch = np.argwhere(np.any(img[:, PANEL_W:] != expected, axis=2))
    assert len(mismatch) == 0, f"{len(mismatch)} game pixels differ, first at (y, x-480) {mismatch[0]}"


def test_node_brightness_increases_with_level(renderer, ppo_layers, breakout_screen):
    f = ppo_frame(renderer, ppo_layers, breakout_screen)
    layout = renderer.layout(f.spec)
    nodes = np.asarray(layout.nodes.rows, np.float64)[:, :4]  # cx, cy, radius, level slot
    levels = np.zeros(layout.n_nodes, np.float32)
    bounds = np.cumsum([0, *layout.node_counts])
    for lo, hi in itertools.pairwise(bounds):
        levels[lo:hi] = np.linspace(0.0, 1.0, hi - lo)  # dark to bright down every column
    # the output column's levels are probabilities: make the executed action's (ring) the brightest
    probs = levels[bounds[-2]:].copy()
    img = draw(renderer, [f.with_(levels=levels, probs=probs, action=len(probs) - 1)])[0]
    brightness = np.array([img[int(cy), int(cx)].astype(float).sum() for cx, cy, _, _ in nodes])
    slots = nodes[:, 3].astype(int) - layout.slot_levels
    for lo, hi in itertools.pairwise(bounds):
        col = brightness[(slots >= lo) & (slots < hi)]
        assert np.all(np.diff(col) > 0), f"nodes {lo}..{hi - 1}: brightness {col} not increasing with level"


def test_node_quads_fitted_to_the_glow_draw_what_full_quads_draw(renderer, ppo_layers, breakout_screen):
    """Each node's quad covers only where its disc, halo and ring can draw at its level; the
    frames equal those drawn with every quad of the full glow extent, at levels from 0 to 1 (the
    halo's edge crossing the fitted quad's) and with the executed action's ring."""
    f = ppo_frame(renderer, ppo_layers, breakout_screen)
    n = renderer.layout(f.spec).n_nodes
    ramp = np.concatenate([[0.0], np.geomspace(1e-4, 1.0, n - 1)]).astype(np.float32)
    frames = []
    for levels, action in ((ramp, 0), (ramp[::-1].copy(), 3), (np.random.default_rng(5).permutation(ramp), 1)):
        probs = levels[-4:] / max(float(levels[-4:].sum()), 1e-6)
        frames.append(f.with_(levels=levels, probs=probs.astype(np.float32), action=action))
    nodes = renderer.passes.nodes
    assert nodes.fit_quads
    fitted = [draw(renderer, [x]) for x in frames]
    nodes.fit_quads = False
    try:
        full = [draw(renderer, [x]) for x in frames]
    finally:
        nodes.fit_quads = True
    for k, (a, b) in enumerate(zip(fitted, full, strict=True)):
        differ = np.argwhere(np.any(a[0] != b[0], axis=2))
        assert len(differ) == 0, f"frame {k}: {len(differ)} pixels differ, first at (y, x) {differ[0]}"


def test_strongest_inputs_keeps_each_nodes_k_largest():
    w = np.array([[0.2, 0.9, 0.5, 0.9], [1.0, 0.15, 0.3, 0.6]], np.float32)
    np.testing.assert_array_equal(strongest_inputs(w, 2), np.float32([[0.0, 0.9, 0.0, 0.9], [1.0, 0.0, 0.0, 0.6]]))
    np.testing.assert_array_equal(strongest_inputs(w, None), w)
    np.testing.assert_array_equal(strongest_inputs(w, 4), w)


def test_only_each_nodes_strongest_inputs_are_drawn(renderer, ppo_layers, breakout_screen):
    """Every edge into Conv1's first node has a weight, every other edge none: the diagram draws
    its EDGES_PER_NODE strongest (each with its real weight), the others not at all."""
    f = ppo_frame(renderer, ppo_layers, breakout_screen)
    layout = renderer.layout(f.spec)
    counts = layout.node_counts
    mats = [np.zeros((d, s), np.float32) for s, d in itertools.pairwise(counts)]
    mats[0][0] = np.linspace(0.4, 1.0, counts[0])[::-1]  # input node 0 the strongest
    levels = np.ones(layout.n_nodes, np.float32)
    levels[-len(f.probs):] = f.probs
    lit, dark = draw(renderer, [f.with_(levels=levels, edges=layout.edge_values(mats)),
                                f.with_(levels=levels, edges=np.zeros(layout.n_edges, np.float32))])
    for s, row in enumerate(layout.edges.rows[: counts[0]]):  # the edges into Conv1's node 0
        x0, y0, x1, y1 = row[:4]
        mid = lit[round((y0 + y1) / 2), round((x0 + x1) / 2)].astype(int)
        base = dark[round((y0 + y1) / 2), round((x0 + x1) / 2)].astype(int)
        if s < EDGES_PER_NODE:
            assert mid.sum() > base.sum() + 30, f"input {s}: one of the strongest, but not drawn"
        else:
            np.testing.assert_array_equal(mid, base, err_msg=f"input {s}: not among the strongest, but drawn")


def test_batched_frames_equal_single_frames(renderer, ppo_layers, breakout_screen):
    a = ppo_frame(renderer, ppo_layers, breakout_screen, action=0)
    flipped = np.ascontiguousarray(breakout_screen[::-1])
    b = a.with_(action=3, probs=np.array([0.7, 0.1, 0.1, 0.1], np.float32), screen=flipped,
                levels=a.levels[::-1].copy())
    both = draw(renderer, [a, b])
    assert not np.array_equal(both[0], both[1])
    np.testing.assert_array_equal(both[0], draw(renderer, [a])[0])
    np.testing.assert_array_equal(both[1], draw(renderer, [b], tile0=1)[0])
    np.testing.assert_array_equal(draw(renderer, [b])[0], both[1])  # the same in another tile


def test_a_frame_draws_the_same_in_every_tile(ppo_layers, breakout_screen):
    """Where a frame lands in the tiled target depends on what else the pass draws (other
    milestones, other shards); its pixels must not. Before the shapes were computed from the
    fragment's exact frame pixel, the far tiles of 16 differed by up to 64 levels."""
    with FrameRenderer(max_tiles=16) as r16:
        a = ppo_frame(r16, ppo_layers, breakout_screen, action=0)
        first, *others = (draw(r16, [a], yuv=True, tile0=t) for t in (0, 7, 15))
        for rgb, yuv in others:
            np.testing.assert_array_equal(rgb, first[0])
            np.testing.assert_array_equal(yuv, first[1])


# ---------------------------------------------------------------------------------------------
# RGB -> I420 on the GPU


def bt601_i420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Limited-range BT.601 planes as floats; chroma from the mean of each 2x2 block."""
    c = rgb.astype(np.float64) / 255.0
    y = 16 + c @ np.array([65.481, 128.553, 24.966])
    m = c.reshape(FRAME_H // 2, 2, FRAME_W // 2, 2, 3).mean(axis=(1, 3))
    u = 128 + m @ np.array([-37.797, -74.203, 112.0])
    v = 128 + m @ np.array([112.0, -93.786, -18.214])
    return y, u, v


def test_yuv_planes_are_bt601_of_the_rgb_frame(renderer, ppo_layers, breakout_screen):
    a = ppo_frame(renderer, ppo_layers, breakout_screen)
    noise = np.random.default_rng(1).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    b = a.with_(action=1, screen=noise)
    rgb, yuv = draw(renderer, [a, b], yuv=True)
    assert yuv.shape == (2, FRAME_H * 3 // 2, FRAME_W) and yuv.dtype == np.uint8
    for tile in range(2):
        y, u, v = bt601_i420(rgb[tile])
        planes = yuv[tile].reshape(-1)
        gy = planes[: FRAME_H * FRAME_W].reshape(FRAME_H, FRAME_W)
        q = FRAME_H * FRAME_W // 4
        gu = planes[FRAME_H * FRAME_W : FRAME_H * FRAME_W + q].reshape(FRAME_H // 2, FRAME_W // 2)
        gv = planes[FRAME_H * FRAME_W + q :].reshape(FRAME_H // 2, FRAME_W // 2)
        for name, got, want, tol in (("Y", gy, y, 1), ("U", gu, u, 2), ("V", gv, v, 2)):
            err = np.abs(got.astype(np.float64) - want)
            worst = np.unravel_index(int(err.argmax()), err.shape)
            assert err.max() <= tol, f"tile {tile} {name}: off by {err.max():.2f} at {worst}"


def test_panel_images_equal_drawing_every_item(renderer, ppo_layers, breakout_screen):
    """Fixed items come from a per-milestone panel image copied into each tile; drawing them with
    every frame instead gives the same pixels (two milestones: their titles differ)."""
    if not renderer.static_copy:
        pytest.skip("no glCopyImageSubData in this context: every frame draws every item already")
    a = ppo_frame(renderer, ppo_layers, breakout_screen)
    b = a.with_(action=1, spec=replace(a.spec, milestone="75%", learning_rate=1e-3))
    with_images = draw(renderer, [a, b])
    renderer.static_copy = False
    try:
        drawn = draw(renderer, [a, b])
    finally:
        renderer.static_copy = True
    assert renderer.static_copy
    assert np.array_equal(with_images, drawn)
    assert not np.array_equal(with_images[0, :54], with_images[1, :54])  # the subtitles differ


def test_software_path_equals_the_whole_frame(renderer, ppo_layers):
    """What the pipeline does on llvmpipe (panel half drawn and read as RGBA, the game scaled in and
    converted by the encoder thread) gives the I420 planes of the frame drawn whole by the shaders."""
    from gpurender.encode import I420Converter

    screen = np.random.default_rng(5).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    a = ppo_frame(renderer, ppo_layers, screen)
    b = a.with_(action=0, screen=screen[::-1].copy())
    whole = draw(renderer, [a, b])  # GL: panel + game shader
    spec = a.spec
    layout = renderer.layout(spec)
    values = np.concatenate([layout.values(np.array([f.action]), f.probs[None], f.levels[None],
                                           _edges(renderer, spec)[None], f.hist_actions[None], f.hist_scores[None])
                             for f in (a, b)])
    base = layout.static_chars(spec)
    chars = np.stack([layout.frame_chars(base, _texts(renderer, f)) for f in (a, b)])
    renderer.begin(2, game=False)
    renderer.draw(spec, values, chars, None)
    panels = renderer.read_panels(2)
    assert panels.shape == (2, FRAME_H, PANEL_W, 4)
    assert np.array_equal(panels[..., :3], whole[:, :, :PANEL_W]), "the panel half differs from the whole frame's"
    conv = I420Converter()
    for tile, f in enumerate((a, b)):
        planes = conv.compose(panels[tile], f.screen)
        want_y, want_u, want_v = bt601_i420(whole[tile])
        for name, got, want, tol in (("Y", conv.y, want_y, 1), ("U", conv.u, want_u, 2), ("V", conv.v, want_v, 2)):
            err = np.abs(got.astype(np.float64) - want)
            worst = np.unravel_index(int(err.argmax()), err.shape)
            assert err.max() <= tol, f"tile {tile} {name}: off by {err.max():.2f} at {worst}"
        assert planes.shape == (FRAME_H * 3 // 2, FRAME_W)


# ---------------------------------------------------------------------------------------------
# The pipeline through its Python API


@pytest.fixture(scope="module")
def api_renders(ppo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two renders of the same checkpoint with the same seed, 1 s at 30 fps."""
    from gpurender.pipeline import render

    root = tmp_path_factory.mktemp("api")
    run = root / "run"
    run.mkdir()
    shutil.copy(ppo_checkpoint, run / "pct_10.zip")
    cfg = RenderConfig(model_dir=(run,), output_dir=root / "a", clip_seconds=1.0, fps=30, seed=0,
                       device="cpu", encoder="x264")
    first = render(cfg, progress=False)
    second = render(replace(cfg, output_dir=root / "b"), progress=False)
    return first, second


def test_python_api_renders_a_playable_video(api_renders):
    report, _ = api_renders
    assert report.failures == []
    assert len(report.videos) == 1 and not report.videos[0].skipped
    video = report.videos[0]
    assert video.path.name == "step_post_training_pct_10_analytics.mp4"
    assert video.frames == 30 and report.frames == 30
    d = decode(video.path)
    assert (d.codec, d.width, d.height, d.pix_fmt, d.fps) == ("h264", 960, 540, "yuv420p", 30.0)
    assert len(d.frames) == 30
    assert d.color_range == 1  # limited range, as the shader writes it
    assert not any(p.name.endswith(".partial.mp4") for p in video.path.parent.iterdir())
    assert 0 < report.first_frame_seconds < report.wall_seconds
    assert set(report.stage_seconds) >= {"infer", "env", "gl", "pack"}


def test_same_seed_renders_identical_frames(api_renders):
    first, second = (decode(r.videos[0].path).frames for r in api_renders)
    assert len(first) == len(second) == 30
    assert not np.array_equal(first[0], first[-1]), "the video is a still image"
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert np.array_equal(a, b), f"frame {i} differs between two renders with the same seed"


def test_gpu_branch_of_the_pipeline_matches_the_software_branch(ppo_checkpoint, tmp_path, monkeypatch):
    """The pipeline as it runs on a GPU (game drawn by its shader, the I420 shader pass read back)
    forced here on llvmpipe: its videos match the software branch's (OpenCV conversion) frame
    for frame, up to the rounding of the two conversions and the encoder."""
    import gpurender.render.renderer as renderer_module
    from gpurender.pipeline import render

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ppo_checkpoint, run / "pct_10.zip")
    cfg = RenderConfig(model_dir=(run,), output_dir=tmp_path / "software", clip_seconds=0.5, fps=30, seed=0,
                       device="cpu", encoder="x264", crf=0)
    software = render(cfg, progress=False)
    monkeypatch.setattr(renderer_module, "is_software", lambda name: False)
    passes = []
    read_yuv = renderer_module.FrameRenderer.read_yuv

    def counted(self, n):
        passes.append(n)
        return read_yuv(self, n)

    monkeypatch.setattr(renderer_module.FrameRenderer, "read_yuv", counted)
    gpu_like = render(replace(cfg, output_dir=tmp_path / "gpu"), progress=False)
    assert sum(passes) == 15  # every frame went through the I420 shader pass
    assert software.renderer == gpu_like.renderer and "llvmpipe" in software.renderer
    a, b = (decode(r.videos[0].path).frames for r in (software, gpu_like))
    assert len(a) == len(b) == 15
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        diff = np.abs(x.astype(np.int16) - y.astype(np.int16))
        assert diff.max() <= 2, f"frame {i}: the two branches differ by up to {diff.max()}"


def test_stacked_forward_renders_what_per_milestone_forwards_render(ppo_checkpoint, tmp_path):
    """Two milestones of one architecture (different weights) through the simulation process with
    one stacked forward per step (what CUDA runs) and with one forward per milestone (the CPU
    default): the same videos, frame for frame, up to the float rounding of the two forwards."""
    import torch
    from stable_baselines3 import PPO

    from gpurender.pipeline import render

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ppo_checkpoint, run / "pct_10.zip")
    model = PPO.load(ppo_checkpoint, device="cpu")
    with torch.no_grad():
        for p in model.policy.parameters():
            p.mul_(1.1)
    model.save(run / "pct_50.zip")
    cfg = RenderConfig(model_dir=(run,), output_dir=tmp_path / "per", clip_seconds=0.5, fps=30, seed=0,
                       device="cpu", encoder="x264", crf=0, stack_forwards=False)
    per_milestone = render(cfg, progress=False)
    stacked = render(replace(cfg, output_dir=tmp_path / "stacked", stack_forwards=True), progress=False)
    assert (per_milestone.forwards_per_step, stacked.forwards_per_step) == (2, 1)
    for v1, v2 in zip(per_milestone.videos, stacked.videos, strict=True):
        assert v1.path.name == v2.path.name
        a, b = decode(v1.path).frames, decode(v2.path).frames
        assert len(a) == len(b) == 15
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = np.abs(x.astype(np.int16) - y.astype(np.int16))
            assert diff.max() <= 1, f"{v1.path.name} frame {i}: differs by up to {diff.max()}"
    first = [decode(v.path).frames[-1] for v in stacked.videos]
    assert not np.array_equal(first[0][:540, :480], first[1][:540, :480])  # two different agents' panels
