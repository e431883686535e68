"""Truth tests: what a real agent's video shows is what that agent computed, end to end.

Three real Breakout checkpoints (a trained PPO kept in tests/data, conftest's A2C and DQN) are
rendered in one job, as a user renders them, with ``trace=True``. Then, independently of the render:

* the game is replayed here (same game, seed and backend, stepping the trace's actions) and
  SB3's own methods run on the observations the agent saw: the trace's probabilities, Q-values,
  value and action are SB3's (1e-5), its reward, score and lives the env's own (the score summed
  over a whole game, restarting at game over: the DQN loses its last life inside the clip);
* the MP4 is decoded and the panel read back from its pixels: which policy row is highlighted,
  how long each probability bar is, and the metric and row texts, read glyph by glyph against the
  panel font's own atlas (a reader that is itself checked to tell a wrong value from the right one).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
from _panel import PanelReader, luma
from _video import decode

from gpurender.config import RenderConfig
from gpurender.games import Game, resolve_game
from gpurender.network import LayerInfo
from gpurender.render.atlas import GlyphAtlas
from gpurender.render.layout import (
    BACKGROUND,
    BAR,
    BAR_BG,
    FACES,
    FRAME_H,
    FRAME_W,
    HILITE,
    PANEL_W,
    SLOT_ACTION,
    SLOT_PROBS,
    WHITE,
    YELLOW,
    PanelLayout,
    PanelSpec,
)

GAME = resolve_game("Breakout")
TRAINED_PPO = Path(__file__).parent / "data" / "ppo_breakout_300k.zip"
"""A trained Breakout PPO (300k steps: the bundled demo's 100 % milestone before the demo moved to
RoadRunner): it serves, returns the ball and scores within the clip."""
FPS = 15
FRAMES = 200
"""Long enough for conftest's DQN (always FIRE) to lose its fifth life: step 184, 2 points."""
SEED = 0
BACKEND = "gym"  # SB3's own wrappers: the observations are exactly those SB3 would feed the model
LABELS = {"PPO": "pct_100", "A2C": "pct_50", "DQN": "pct_25"}
"""The algorithms rendered (the bundled trained PPO, conftest's other checkpoints) and the file name
each is rendered as (its video is named after it). PPO and DQN are required by the tests; A2C costs
about 4 s."""
TOL = 1e-5
MARGIN = 25.0
"""How much worse (mean squared luma) the second-best glyph must fit every cell than the best: a
read is certain (~100 and more where the contrast is lowest, yellow on the highlighted row)."""


# ---------------------------------------------------------------------------------------------
# Colours as the decoder gives them back: limited-range BT.601 luma and chroma


def _cb(rgb) -> float:
    r, g, b = rgb[:3]
    return 128.0 - 37.797 * r - 74.203 * g + 112.0 * b


def _over(color, under) -> tuple[float, float, float]:
    a = color[3]
    return tuple(a * c + (1 - a) * u for c, u in zip(color[:3], under[:3], strict=True))


HILITE_BG = _over(HILITE, BACKGROUND)
"""The executed action's row background."""


# ---------------------------------------------------------------------------------------------
# A rendered clip, and what the tests recompute of it


@dataclass
class Clip:
    algo: str
    checkpoint: Path
    video: Path
    sidecar: dict
    trace: list[dict]
    layout: PanelLayout

    @property
    def q_based(self) -> bool:
        return self.algo == "DQN"

    @property
    def game(self) -> Game:
        return resolve_game(self.sidecar["game"])

    @property
    def names(self) -> list[str]:
        return self.sidecar["action_names"]

    def column(self, key: str) -> np.ndarray:
        return np.array([r[key] for r in self.trace])

    @cached_property
    def _planes(self) -> tuple[np.ndarray, np.ndarray]:
        """The decoded frames' panel half, kept as uint8: Y (T, 540, 480) and Cb (T, 270, 240)."""
        ys, cbs = [], []
        for f in decode(self.video).frames:
            ys.append(f[:FRAME_H, :PANEL_W])
            cbs.append(f[FRAME_H : FRAME_H + FRAME_H // 4].reshape(FRAME_H // 2, FRAME_W // 2)[:, : PANEL_W // 2])
        return np.stack(ys), np.stack(cbs)

    @property
    def n_decoded(self) -> int:
        return len(self._planes[0])

    def planes(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded frame ``t``'s panel: luma (540, 480) and Cb (270, 240), as float."""
        y, cb = self._planes
        return y[t].astype(np.float64), cb[t].astype(np.float64)

    @cached_property
    def replay(self) -> Replay:
        return replay(self)

    @cached_property
    def sb3(self) -> dict[str, np.ndarray]:
        return sb3_outputs(self)


@dataclass
class Replay:
    """The game replayed here: what frame ``t`` of the video must show of the env."""

    obs: np.ndarray
    """(T, 4, 84, 84) uint8: the observation the agent acted on at frame t."""
    rewards: np.ndarray
    """(T,) the env's reward for the step that led to frame t (0 at frame 0)."""
    scores: np.ndarray
    """(T,) the running game's score: rewards summed since the game began."""
    lives: np.ndarray
    game_overs: list[tuple[int, float]]
    """(frame showing the new game, final score of the game that ended) per game over."""


def replay(clip: Clip) -> Replay:
    from gpurender.envs import make_atari

    actions = clip.column("action")
    env = make_atari(clip.game, [clip.sidecar["seed"]], clip.sidecar["backend"])
    try:
        state = env.reset()
        obs, rewards, lives, scores, overs = [state.obs[0].copy()], [0.0], [int(state.lives[0])], [0.0], []
        score = 0.0
        for t in range(1, len(actions)):
            state = env.step(np.array([actions[t - 1]]))
            score += float(state.rewards[0])
            if state.game_over[0]:
                overs.append((t, score))
                score = 0.0
            obs.append(state.obs[0].copy())
            rewards.append(float(state.rewards[0]))
            lives.append(int(state.lives[0]))
            scores.append(score)
    finally:
        env.close()
    return Replay(np.stack(obs), np.array(rewards), np.array(scores), np.array(lives), overs)


def sb3_outputs(clip: Clip) -> dict[str, np.ndarray]:
    """SB3's own numbers for every replayed observation, from the model as ``<Algo>.load`` gives it."""
    import torch
    from stable_baselines3 import A2C, DQN, PPO

    model = {"PPO": PPO, "A2C": A2C, "DQN": DQN}[clip.algo].load(clip.checkpoint, device="cpu")
    policy = model.policy.eval()
    obs, _ = policy.obs_to_tensor(clip.replay.obs)
    with torch.no_grad():
        if clip.q_based:
            q = policy.q_net(obs)
            return {"q_values": q.numpy(), "value": q.max(dim=1).values.numpy(),
                    "probs": torch.softmax(q, dim=1).numpy()}
        return {"probs": policy.get_distribution(obs).distribution.probs.numpy(),
                "value": policy.predict_values(obs).flatten().numpy()}


def _kind(name: str) -> str:
    return "input" if name == "Input" else "output" if name == "Output" else "conv" if name.startswith("Conv") \
        else "dense"


def _layout(sidecar: dict, atlas: GlyphAtlas) -> PanelLayout:
    layers = tuple(LayerInfo(x["name"], _kind(x["name"]), tuple(x["shape"]), x["nodes"]) for x in sidecar["layers"])
    game = resolve_game(sidecar["game"])
    spec = PanelSpec(game.title, sidecar["algorithm"], tuple(sidecar["action_names"]), layers, "0%", True, 1e-4)
    return PanelLayout(spec, atlas)


@pytest.fixture(scope="session")
def atlas() -> GlyphAtlas:
    return GlyphAtlas(FACES)


@pytest.fixture(scope="session")
def clips(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          atlas: GlyphAtlas) -> dict[str, Clip]:
    """The checkpoints of :data:`LABELS` rendered in one job, 200 frames at 15 fps, with traces."""
    from gpurender.pipeline import render
    from gpurender.sidecar import sidecar_path
    from gpurender.trace import read_trace

    root = tmp_path_factory.mktemp("truth")
    run = root / "run"
    run.mkdir()
    sources = {algo: TRAINED_PPO if algo == "PPO" else request.getfixturevalue(f"{algo.lower()}_checkpoint")
               for algo in LABELS}
    for algo, src in sources.items():
        shutil.copy(src, run / f"{LABELS[algo]}.zip")
    cfg = RenderConfig(model_dir=(run,), output_dir=root / "videos", game=GAME.name, clip_seconds=FRAMES / FPS,
                       fps=FPS, seed=SEED, backend=BACKEND, device="cpu", encoder="x264", trace=True)
    report = render(cfg, progress=False)
    assert report.failures == []
    out = {}
    for v in report.videos:
        algo = v.agent.algo
        assert v.trace is not None and v.trace.is_file(), f"{v.path.name}: no trace written"
        sidecar = json.loads(sidecar_path(v.path).read_text())
        assert sidecar["trace"] == v.trace.name
        out[algo] = Clip(algo, sources[algo], v.path, sidecar, read_trace(v.trace),
                         _layout(sidecar, atlas))
    assert sorted(out) == sorted(sources)
    return out


ALGOS = pytest.mark.parametrize("algo", list(LABELS))


# ---------------------------------------------------------------------------------------------
# 1. The trace is what SB3 and the env compute


@ALGOS
def test_trace_is_what_sb3_computes_on_the_same_observations(clips, algo):
    clip = clips[algo]
    assert [r["frame"] for r in clip.trace] == list(range(FRAMES))
    sb3 = clip.sb3
    keys = ("probs", "q_values", "value") if clip.q_based else ("probs", "value")
    for key in keys:
        got = clip.column(key)
        err = np.abs(got - sb3[key])
        t = int(np.unravel_index(err.argmax(), err.shape)[0])
        assert err.max() <= TOL, (f"{algo} {key} differs from SB3's by {err.max():.2e} at frame {t}: "
                                  f"trace {got[t]}, SB3 {sb3[key][t]}")
    if not clip.q_based:
        assert "q_values" not in clip.trace[0]
    # the output nodes show the probabilities as they are (the last layer's levels)
    outputs = np.array([r["levels"][-clip.layout.n_actions :] for r in clip.trace])
    assert sum(x["nodes"] for x in clip.sidecar["layers"]) == len(clip.trace[0]["levels"])
    assert np.abs(outputs - sb3["probs"]).max() <= TOL, f"{algo}: output node levels are not SB3's probabilities"
    actions = clip.column("action")
    greedy = (sb3["q_values"] if clip.q_based else sb3["probs"]).argmax(axis=1)
    wrong = np.flatnonzero(actions != greedy)
    assert wrong.size == 0, f"{algo}: executed action is not the argmax at frames {wrong[:10]}"


@ALGOS
def test_trace_reward_score_and_lives_are_the_envs(clips, algo):
    clip, rep = clips[algo], clips[algo].replay
    for key, want in (("reward", rep.rewards), ("score", rep.scores), ("lives", rep.lives)):
        got = clip.column(key)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (f"{algo} {key} differs from the env's at frames {bad[:8]}: trace {got[bad[:8]]}, "
                               f"env {want[bad[:8]]}")
    assert clip.sidecar["episode_returns"] == [s for _, s in rep.game_overs]
    assert clip.sidecar["unfinished_episode_score"] == rep.scores[-1]


def test_the_clips_cover_scoring_and_a_game_over(clips):
    """What the score checks above rely on: points are scored, and a game that scored ends inside
    a clip (so a score that does not restart at game over shows)."""
    dqn = clips["DQN"].replay
    assert any(score > 0 for _, score in dqn.game_overs), (
        f"conftest's DQN no longer loses a game with points within {FRAMES} frames: {dqn.game_overs}; "
        "lengthen the clip or pick another checkpoint")
    assert clips["PPO"].replay.scores.max() > 0, "the trained PPO scores nothing in the clip"


# ---------------------------------------------------------------------------------------------
# Reading the panel back from decoded pixels


def _rows(layout: PanelLayout) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per action: (highlight rect, bar rect) as (x, y, w, h)."""
    rows = np.asarray(layout.rects.rows, np.float64).reshape(-1, 4, 4)
    out = []
    for k in range(layout.n_actions):
        hl = [g for g, a, _, b in rows if a[3] == 0 and b[0] < 0 and b[1] == SLOT_ACTION and b[2] == k]
        bar = [g for g, _, _, b in rows if b[0] == SLOT_PROBS + k]
        assert len(hl) == 1 and len(bar) == 1, f"action {k}: expected one highlight row and one bar"
        out.append((hl[0], bar[0]))
    return out


def _probe_frames(clip: Clip, n: int = 12) -> list[int]:
    """``n`` frames spread over the clip, the first and last included."""
    return sorted(set(np.linspace(0, len(clip.trace) - 1, n).round().astype(int).tolist()))


# ---------------------------------------------------------------------------------------------
# 2. The decoded pixels show the trace


@ALGOS
def test_video_has_a_frame_per_trace_record(clips, algo):
    assert clips[algo].n_decoded == len(clips[algo].trace) == FRAMES


def _filled(y: np.ndarray, bar) -> tuple[float, int]:
    """A bar's filled length in pixels (mean over its middle rows) and the x where it starts."""
    bx, by, bw, bh = bar
    mid = (luma(BAR_BG) + min(luma(BAR), luma(YELLOW))) / 2
    band = y[int(by + bh * 0.3) : int(by + bh * 0.7) + 1, int(bx) : round(float(bx + bw))]
    return float(np.mean((band > mid).sum(axis=1))), int(bx)


@ALGOS
def test_only_the_executed_actions_row_is_highlighted(clips, algo):
    """The executed action's row has the highlight background and a yellow bar; every other row
    a plain background and a blue bar. At spread frames and where the action changes."""
    clip = clips[algo]
    rows = _rows(clip.layout)
    hi_y, lo_y = luma(HILITE_BG), luma(BACKGROUND)
    actions = clip.column("action")
    changes = np.flatnonzero(np.diff(actions)) + 1
    frames = sorted(set(_probe_frames(clip, 20)) | set(changes[:20].tolist()))
    for t in frames:
        y, cb = clip.planes(t)
        action = int(actions[t])
        for k, ((hx, hy, _, hh), bar) in enumerate(rows):
            # the row's background left of the bar: mostly background, some glyphs
            bg = float(np.median(y[int(hy) + 1 : int(hy + hh) - 1, int(hx) + 1 : int(bar[0]) - 2]))
            lit = abs(bg - hi_y) < abs(bg - lo_y)
            assert lit == (k == action), (
                f"{algo} frame {t}: row {k} ({clip.names[k]}) background luma {bg:.0f} "
                f"({'highlighted' if lit else 'plain'}; highlighted {hi_y:.0f}, plain {lo_y:.0f}), "
                f"executed action {action} ({clip.names[action]})")
            # the bar's filled part (however long it is): yellow for the executed action, else blue
            filled, x0 = _filled(y, bar)
            if filled >= 6:
                c = float(np.median(cb[int(bar[1] + bar[3] / 2) // 2, x0 // 2 + 1 : int(x0 + filled) // 2 - 1]))
                yellow = abs(c - _cb(YELLOW)) < abs(c - _cb(BAR))
                assert yellow == (k == action), (
                    f"{algo} frame {t}: row {k} ({clip.names[k]}) bar is {'yellow' if yellow else 'blue'} "
                    f"(Cb {c:.0f}), executed action {action} ({clip.names[action]})")


@ALGOS
def test_bar_lengths_are_the_trace_probabilities(clips, algo):
    """Every bar's filled length is its probability times the bar's width, within a pixel (every
    5th frame); the trained PPO's probabilities differ enough that bars in a wrong order show."""
    clip = clips[algo]
    rows = _rows(clip.layout)
    checked = telling = 0
    for t in range(0, len(clip.trace), 5):
        y, _ = clip.planes(t)
        probs = np.array(clip.trace[t]["probs"])
        for k, (_, bar) in enumerate(rows):
            bw = bar[2]
            filled, _ = _filled(y, bar)
            assert abs(filled - probs[k] * bw) <= 1, (
                f"{algo} frame {t}: bar {k} ({clip.names[k]}) is {filled:.1f} of {bw:.0f} px filled; "
                f"the trace's probability {probs[k]:.4f} is {probs[k] * bw:.1f} px")
            checked += 1
        # frames where a wrong order of the bars (reversed, shifted) would be visible
        telling += np.abs(probs - probs[::-1]).max() * rows[0][1][2] > 8
    assert checked > 0
    if algo == "PPO":
        assert telling >= 5, f"only {telling} probed frames of the trained PPO have clearly unequal bars"


def _expected_fields(clip: Clip, t: int) -> dict[str, tuple[str, tuple, tuple]]:
    """Field -> (the number or word it must end with, text colour, background) at frame ``t``:
    the trace's numbers at the panel's precision (README: frame, Ep Reward 1 decimal, lives,
    value and the policy rows 3 decimals, the executed action's name)."""
    r = clip.trace[t]
    out = {
        "frame": (f"{t + 1:,}", WHITE, BACKGROUND),
        "reward": (f"{r['score']:.1f}", WHITE, BACKGROUND),
        "lives": (f"{r['lives']}", WHITE, BACKGROUND),
        "value": (f"{r['value']:.3f}", WHITE, BACKGROUND),
        "action": (clip.names[r["action"]], YELLOW, BACKGROUND),
    }
    row = r["q_values"] if clip.q_based else r["probs"]
    for k, v in enumerate(row):
        hit = k == r["action"]
        out[f"act{k}"] = (f"{v:.3f}", YELLOW if hit else WHITE, HILITE_BG if hit else BACKGROUND)
    return out


@ALGOS
def test_texts_read_back_as_the_trace(clips, algo):
    """Frame, Ep Reward (the trace's score), Lives, Value Est / Max Q, Action and every policy
    row's number, read from the decoded frames: at spread frames, at game overs and wherever the
    score changes."""
    clip = clips[algo]
    reader = PanelReader(clip.layout)
    scored = {t for t in range(1, len(clip.trace)) if clip.trace[t]["score"] != clip.trace[t - 1]["score"]}
    frames = sorted(set(_probe_frames(clip, 10)) | {t for t, _ in clip.replay.game_overs} | scored)
    values_read = set()
    for t in frames:
        y, _ = clip.planes(t)
        for name, (want, fg, bg) in _expected_fields(clip, t).items():
            text, margin = reader.read(y, name, fg, bg)
            got = text.split()[-1] if text.split() else ""
            assert got == want and "?" not in text, (
                f"{algo} frame {t}: the {name} field reads {text!r}; from the trace: {want!r}")
            assert margin > MARGIN, f"{algo} frame {t}: the {name} field ({text!r}) reads ambiguously ({margin:.0f})"
            if name == "value":
                values_read.add(got)
    assert len(values_read) > 1, f"{algo}: the value field read the same at every probed frame: {values_read}"


def test_value_text_matches_the_renderer_drawing_the_trace_value_only(clips):
    """The renderer itself draws frame t's panel with the trace's value, with that value + 0.25
    and with the action index in the value field. The decoded frame's value field matches the
    first drawing cell for cell and not the others; the glyph reader reads each drawing as the
    value drawn, so it can tell a wrong value from the right one."""
    from gpurender.render import FrameRenderer

    clip = clips["PPO"]
    t = _probe_frames(clip, 3)[1]
    r = clip.trace[t]
    layout = clip.layout
    spec = PanelSpec(clip.game.title, "PPO", tuple(clip.names), layout.layers, "0%", True, 1e-4)
    shown = [r["value"], r["value"] + 0.25, float(r["action"])]
    assert len({f"{v:.3f}" for v in shown}) == len(shown)
    n = len(shown)
    with FrameRenderer(max_tiles=n) as renderer:
        lay = renderer.layout(spec)
        values = lay.values(np.full(n, r["action"]), np.tile(np.float32(r["probs"]), (n, 1)),
                            np.tile(np.float32(r["levels"]), (n, 1)), np.ones((n, lay.n_edges), np.float32))
        base = lay.static_chars(spec)
        chars = np.stack([lay.frame_chars(base, {"value": f"Value Est: {v:>12.3f}"}) for v in shown])
        renderer.begin(n, game=False)
        renderer.draw(spec, values, chars, None)
        drawn = [luma(np.moveaxis(img[..., :3] / 255.0, -1, 0)) for img in renderer.read_panels(n)]
    reader = PanelReader(layout)
    decoded = reader._cells(clip.planes(t)[0], "value")
    for i, (v, y) in enumerate(zip(shown, drawn, strict=True)):
        text, margin = reader.read(y, "value", WHITE, BACKGROUND)
        assert text.split()[-1] == f"{v:.3f}" and margin > MARGIN, f"drew {v:.3f}, read {text!r} ({margin:.0f})"
        worst = float(np.abs(reader._cells(y, "value") - decoded).mean(axis=(1, 2)).max())
        if i == 0:
            assert worst < 4, f"frame {t}: the decoded value field differs from the drawn {v:.3f} by {worst:.1f}"
        else:
            assert worst > 12, f"frame {t}: the decoded value field matches a drawn wrong value {v:.3f} ({worst:.1f})"


def test_18_action_rows_read_back(tmp_path: Path, atlas: GlyphAtlas):
    """A game with all 18 actions (the demo's RoadRunner): the policy rows sit 9.9 px apart in the
    tiny font, closer than its 13-px cells; read on the rows where names and digits have ink, every
    row's name and probability is the trace's, the executed action's in yellow on its highlight."""
    from gpurender.demo import GAME as DEMO_GAME
    from gpurender.demo import demo_checkpoints
    from gpurender.pipeline import render
    from gpurender.sidecar import sidecar_path
    from gpurender.trace import read_trace

    cfg = RenderConfig(model_dir=tuple(demo_checkpoints()), milestones=("100",), game=DEMO_GAME, output_dir=tmp_path,
                       clip_seconds=1, device="cpu", trace=True)
    (video,) = render(cfg, progress=False).videos
    sidecar = json.loads(sidecar_path(video.path).read_text())
    names, trace = sidecar["action_names"], read_trace(video.trace)
    assert len(names) == 18
    reader = PanelReader(_layout(sidecar, atlas))
    charset = " .0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    frames = decode(video.path).frames
    for t in (0, 9, 19, 29):
        y = frames[t][:FRAME_H, :PANEL_W].astype(np.float64)
        r = trace[t]
        for k, name in enumerate(names):
            hit = k == r["action"]
            text, _ = reader.read(y, f"act{k}", YELLOW if hit else WHITE, HILITE_BG if hit else BACKGROUND, charset)
            assert text.split() == [name, f"{r['probs'][k]:.3f}"], f"frame {t} row {k}: {text!r}"
