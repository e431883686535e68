"""The analytics panel as data: where every rectangle, glyph slot, node and edge sits, and how
one frame's model numbers are packed for the shaders.

A :class:`PanelLayout` is built once per network architecture and game (milestones of one run
share it). Per frame only two small arrays change: ``values`` (float slots: executed action,
probabilities, node levels, edge weights) and ``chars`` (one byte per glyph slot).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gpurender.network import LayerInfo
from gpurender.render.atlas import GlyphAtlas

FRAME_W, FRAME_H = 960, 540
PANEL_W = 480
GAME_RECT = (480.0, 0.0, 480.0, 540.0)

FACES = {
    "title": (True, 17),
    "head": (True, 13),
    "body": (False, 13),
    "row": (False, 12),
    "small": (False, 11),
    "tiny": (False, 10),
}

WHITE = (0.92, 0.94, 0.98, 1.0)
DIM = (0.62, 0.66, 0.75, 1.0)
CYAN = (0.45, 0.85, 1.0, 1.0)
HEADER = (0.09, 0.1, 0.16, 1.0)
"""The panel's title band."""
HEADER_H = 54
"""The title band's height (frame pixels)."""
RULE = (0.25, 0.3, 0.45, 1.0)
"""Separator lines."""
YELLOW = (1.0, 0.86, 0.1, 1.0)
NONE = (0.0, 0.0, 0.0, 0.0)
BAR = (0.27, 0.52, 0.92, 1.0)
BAR_BG = (0.16, 0.18, 0.26, 1.0)
HILITE = (1.0, 0.86, 0.1, 0.16)
BACKGROUND = (0.055, 0.06, 0.09)
LAYER_COLORS = {
    "input": (0.55, 0.8, 1.0),
    "conv": (0.3, 0.95, 0.75),
    "dense": (0.85, 0.55, 1.0),
    "output": (1.0, 0.72, 0.25),
}
EDGE_COLOR = (0.4, 0.75, 1.0)
ATTRIBUTION_FOR = (0.3, 0.95, 0.45)
"""``--network-view attribution``: nodes and edges that pushed toward the executed action."""
ATTRIBUTION_AGAINST = (1.0, 0.3, 0.3)
"""``--network-view attribution``: nodes and edges that pushed away from it (negative levels;
``shaders/nodes.glsl`` and ``edges.glsl``'s ``u_negative``)."""
SALIENCY_ACTOR = (0.15, 0.8, 1.0)
"""The actor's saliency map over the game (``shaders/game.glsl``'s ``u_actor_colour``) and its legend."""
SALIENCY_CRITIC = (1.0, 0.2, 0.8)
"""The critic's saliency map over the game and its legend."""
SALIENCY_ALPHA = 0.75
"""Opacity of a saliency colour where its map is 1 (the video's running maximum)."""

# one colour per action index (history cells and the swatch beside each policy row)
PALETTE = [
    (0.62, 0.64, 0.70), (1.0, 0.45, 0.35), (0.35, 0.75, 1.0), (0.55, 0.95, 0.45), (0.95, 0.55, 0.95),
    (1.0, 0.75, 0.3), (0.4, 0.95, 0.85), (0.75, 0.6, 1.0), (0.95, 0.9, 0.45), (0.9, 0.35, 0.6),
    (0.45, 0.55, 0.95), (0.7, 0.85, 0.3), (1.0, 0.6, 0.6), (0.3, 0.85, 0.6), (0.85, 0.75, 0.95),
    (0.6, 0.8, 0.95), (0.95, 0.7, 0.45), (0.55, 0.6, 0.4),
]
HISTORY_ACTIONS = 48
"""Executed actions shown in the history strip (most recent on the right)."""
HISTORY_SCORES = 96
"""Frames of episode score (the running total of the episode's rewards) shown in the score graph."""
EDGES_PER_NODE = 2
"""Connections drawn into each node of the network diagram: its strongest inputs by mean |weight|
(the diagram's heading says so). Every edge is a long, thin glowing quad, the costliest item to
rasterise on a CPU; the weakest ones were faint anyway (benchmarks/README.md, issue 15)."""
HUD_CHARS = 34
"""Length of the ``--hud`` line (:func:`hud_text`), right-aligned at the panel's foot."""
MODE_WIDTH, MODE_HEIGHT, MODE_PALETTE = 0, 1, 2

SLOT_ACTION = 0
SLOT_ACTION_PROB = 1
SLOT_PROBS = 2


@dataclass(frozen=True)
class PanelSpec:
    """What one milestone's panel says."""

    game_title: str
    algo: str
    action_names: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    milestone: str
    """Shown after ``Progress:`` (``45.2%``) or as ``Milestone: 100,000 steps``."""
    is_percent: bool
    learning_rate: float
    saliency: str = "off"
    """The saliency method drawn over the game, named in the panel's legend (``off``: no legend)."""
    network_view: str = "activations"
    """What the network diagram shows: ``activations``, or ``attribution`` (signed node levels in
    two colours, :data:`ATTRIBUTION_FOR` and :data:`ATTRIBUTION_AGAINST`, and a legend)."""
    hud: bool = False
    """A performance line (frames/s, inference and drawing milliseconds) at the panel's foot."""

    @property
    def q_based(self) -> bool:
        return self.algo in ("DQN", "QRDQN")

    @property
    def layout_key(self) -> tuple:
        key = (self.q_based, self.action_names, tuple((x.name, x.shape, x.nodes) for x in self.layers))
        return (*key, self.saliency, self.network_view, self.hud)


def hud_text(fps: float | None, infer_ms: float | None, draw_ms: float | None) -> str:
    """The ``--hud`` line, :data:`HUD_CHARS` long: ``"  97 fps  infer 1.35  draw 4.20 ms"``; a
    figure not measured yet is ``--``."""

    def four(v: float | None) -> str:
        if v is None:
            return "  --"
        return f"{v:4.2f}" if v < 9.995 else f"{v:4.1f}" if v < 99.95 else f"{min(v, 9999):4.0f}"

    fps_text = "  --" if fps is None else f"{min(fps, 9999):4.0f}"
    return f"{fps_text} fps  infer {four(infer_ms)}  draw {four(draw_ms)} ms".rjust(HUD_CHARS)


def format_lr(lr: float) -> str:
    """``2.5e-4`` the way people write it (not ``2.5e-04``)."""
    mantissa, _, exp = f"{lr:.1e}".partition("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


BIND_SLOT = 12
"""Index of the ``bind`` float4 in an item row (after geom, colour a, colour b)."""


@dataclass
class Items:
    """Rows of the ``t_items`` texture for one kind of item."""

    rows: list[list[float]] = field(default_factory=list)

    def add(self, geom: Sequence[float], a: Sequence[float], b: Sequence[float] = NONE,
            bind: Sequence[float] = (-1, -1, -1, 0)) -> None:
        self.rows.append([*geom, *a, *b, *bind])

    def texture_data(self) -> np.ndarray:
        """(4, n, 4) float32: row r of the texture holds float4 r of every item."""
        arr = np.asarray(self.rows, np.float32).reshape(-1, 4, 4)
        return np.ascontiguousarray(arr.transpose(1, 0, 2))

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def is_bound(row: Sequence[float]) -> bool:
        """Whether an item row reads a per-frame value slot (its ``bind`` float4 names one)."""
        return row[BIND_SLOT] >= 0 or row[BIND_SLOT + 1] >= 0

    @staticmethod
    def binds_text(row: Sequence[float]) -> bool:
        """Whether a glyph row's character comes from a per-frame slot."""
        return row[BIND_SLOT + 1] >= 0


def strongest_inputs(weights: np.ndarray, k: int | None) -> np.ndarray:
    """``weights`` (dst, src) with all but each row's ``k`` largest entries set to 0 (a copy;
    ``k`` None or >= src: unchanged)."""
    w = np.asarray(weights, np.float32)
    if k is None or k >= w.shape[1]:
        return w.copy()
    keep = np.argsort(-w, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(w)
    np.put_along_axis(out, keep, np.take_along_axis(w, keep, axis=1), axis=1)
    return out


@dataclass
class _Field:
    x: float
    y: float
    font: str
    length: int
    slot0: int


class PanelLayout:
    """Static geometry of the panel for one architecture + action set."""

    def __init__(self, spec: PanelSpec, atlas: GlyphAtlas) -> None:
        self.atlas = atlas
        self.n_actions = len(spec.action_names)
        self.layers = spec.layers
        self.node_counts = [x.nodes for x in spec.layers]
        self.n_nodes = sum(self.node_counts)
        self.slot_levels = SLOT_PROBS + self.n_actions
        self.n_edges = sum(a * b for a, b in zip(self.node_counts[:-1], self.node_counts[1:], strict=True))
        self.slot_edges = self.slot_levels + self.n_nodes
        self.slot_hist_actions = self.slot_edges + self.n_edges
        self.slot_hist_scores = self.slot_hist_actions + HISTORY_ACTIONS
        self.n_values = self.slot_hist_scores + HISTORY_SCORES
        self.rects, self.glyphs, self.nodes, self.edges = Items(), Items(), Items(), Items()
        self.fields: dict[str, _Field] = {}
        self._static_fields: dict[str, str] = {}
        self._build(spec)
        self._static_first()

    # -- text -----------------------------------------------------------------------------------

    def _text(self, name: str, x: float, y: float, font: str, length: int, color=WHITE,
              match_color=NONE, bind=(-1, -1, -1, 0), static: str | None = None) -> None:
        f = self.atlas.fonts[font]
        x, y = round(x), round(y)  # whole pixels: glyphs are copied 1:1 from the atlas
        self.fields[name] = _Field(x, y, font, length, len(self.glyphs))
        for i in range(length):
            self.glyphs.add((x + i * f.cell_w, y, f.index, 0), color, match_color, bind)
        if static is not None:
            self._static_fields[name] = static

    @property
    def n_slots(self) -> int:
        return len(self.glyphs)

    def score_head(self, peak: float) -> str:
        """The score graph's heading: what it plots and the score its full height stands for.

        ``peak``: the largest |episode score| among the graph's frames, the value its bars are
        scaled by; 0 when every one is 0 (the bars are all empty: ``max 0``). The longest wording
        that fits the field: ``Episode score, last 96 frames, max 12`` down to ``Score, max 12``."""
        value = f"{peak:,.0f}" if float(peak).is_integer() else f"{peak:,.1f}"
        length = self.fields["score_head"].length
        forms = (f"Episode score, last {HISTORY_SCORES} frames, max {value}",
                 f"Episode score, {HISTORY_SCORES} frames, max {value}",
                 f"Episode score, max {value}",
                 f"Score, max {value}")
        return next((text for text in forms if len(text) <= length), forms[-1])

    # -- geometry -------------------------------------------------------------------------------

    def _build(self, spec: PanelSpec) -> None:
        r = self.rects
        r.add((0, 0, PANEL_W, HEADER_H), HEADER)
        r.add((0, HEADER_H, PANEL_W, 1), RULE)
        r.add((PANEL_W - 1, 0, 1, FRAME_H), RULE)
        self._text("title", 12, 7, "title", 52)
        self._text("subtitle", 12, 32, "small", 66, DIM)

        # training metrics, left column
        for i, name in enumerate(("frame", "progress", "reward", "lives", "value", "action")):
            self._text(name, 12, 66 + i * 19, "body", 27, WHITE if name != "action" else YELLOW)

        # policy distribution / Q-values, right column
        head = "Q-Values (bars: softmax)" if spec.q_based else "Policy Distribution:"
        self._text("policy_head", 228, 62, "head", 26, CYAN, static=head)
        top, height = 84.0, 178.0
        row_h = min(22.0, height / self.n_actions)
        font = "row" if row_h >= 15 else ("small" if row_h >= 12 else "tiny")
        f = self.atlas.fonts[font]
        name_len = max(len(n) for n in spec.action_names)
        bar_x = 228 + (name_len + 8) * f.cell_w + 4
        bar_w = PANEL_W - 12 - bar_x
        for k, _action in enumerate(spec.action_names):
            y = top + k * row_h
            match = (-1, SLOT_ACTION, k, 0)
            r.add((224, y, PANEL_W - 232, row_h - 1), NONE, HILITE, match)
            r.add((221, y + 2, 3, row_h - 5), (*PALETTE[k], 1.0))  # legend for the history strip
            r.add((bar_x, y + row_h * 0.22, bar_w, row_h * 0.56), BAR_BG)
            r.add((bar_x, y + row_h * 0.22, bar_w, row_h * 0.56), BAR, YELLOW, (SLOT_PROBS + k, SLOT_ACTION, k, 0))
            ty = y + (row_h - f.cell_h) / 2
            self._text(f"act{k}", 228, ty, font, name_len + 8, WHITE, YELLOW, match)
        self.name_len = name_len

        # recent executed actions (palette colours, legend beside the policy rows) and the episode
        # score under them, as wide as them; full width under a short action list, the left column
        # only beside a tall one (6+ actions)
        span = PANEL_W - 48 if top + self.n_actions * row_h <= 200 else 216 - 12
        step_a = span // HISTORY_ACTIONS
        width = HISTORY_ACTIONS * step_a - 1  # from the first cell's left edge to the last's right
        step_s = width / HISTORY_SCORES  # touching bars, a step graph: whole pixels or not
        chars = span // self.atlas.fonts["tiny"].cell_w
        self._text("hist_head", 12, 190, "tiny", min(40, chars), DIM, static=f"Last {HISTORY_ACTIONS} actions")
        for i in range(HISTORY_ACTIONS):
            r.add((12 + i * step_a, 204, step_a - 1, 9), NONE, NONE, (self.slot_hist_actions + i, -1, -1, MODE_PALETTE))
        self._text("score_head", 12, 218, "tiny", min(64, chars), DIM)
        graph_top = 218 + self.atlas.fonts["tiny"].cell_h + 1  # a pixel under the heading's glyph cells
        r.add((12, 258, width, 1), RULE)
        for i in range(HISTORY_SCORES):
            r.add((12 + i * step_s, graph_top, step_s, 258 - graph_top), (0.3, 0.8, 0.5, 1.0), NONE,
                  (self.slot_hist_scores + i, -1, -1, MODE_HEIGHT))

        self._network(spec)

    def _network(self, spec: PanelSpec) -> None:
        """The network diagram: its heading and legend, a column of nodes per layer, the edges
        between neighbouring columns; and the line at the panel's foot (saliency legend, HUD)."""
        r = self.rects
        attribution = spec.network_view == "attribution"
        net_head = "Attribution (grad x activation)" if attribution else "Network Activity (real activations)"
        self._text("net_head", 12, 270, "head", len(net_head), CYAN, static=net_head)
        x = 12 + (len(net_head) + 1) * self.atlas.fonts["head"].cell_w
        if attribution:
            x = self._swatches("attr", x, 274, (("toward", ATTRIBUTION_FOR), ("against", ATTRIBUTION_AGAINST)))
            legend = f"top {EDGES_PER_NODE} inputs"
        else:
            legend = f"{EDGES_PER_NODE} strongest inputs per node"
        self._text("net_legend", x, 274, "tiny", len(legend), DIM, static=legend)
        r.add((0, 264, PANEL_W, 1), RULE)
        k_cols = len(self.layers)
        xs = [44 + i * (PANEL_W - 88) / (k_cols - 1) for i in range(k_cols)]
        centers: list[list[tuple[float, float, float]]] = []
        small, tiny = self.atlas.fonts["small"], self.atlas.fonts["tiny"]
        slot = self.slot_levels
        for col, (layer, x) in enumerate(zip(self.layers, xs, strict=True)):
            n = layer.nodes
            spacing = min(24.0, 188.0 / max(n - 1, 1))
            radius = min(7.5, spacing * 0.36)
            y0 = 404 - spacing * (n - 1) / 2
            color = ATTRIBUTION_FOR if attribution and layer.kind != "output" else LAYER_COLORS[layer.kind]
            col_centers = []
            for j in range(n):
                y = y0 + j * spacing
                if layer.kind == "output":
                    bind = (-1, SLOT_ACTION, j, SLOT_ACTION_PROB)
                else:
                    bind = (-1, -1, -1, -1)
                self.nodes.add((x, y, radius, slot + j), (*color, 1.0), YELLOW, bind)
                col_centers.append((x, y, radius))
            slot += n
            centers.append(col_centers)
            name = layer.name
            self._text(f"lname{col}", x - len(name) * small.cell_w / 2, 292, "small", len(name), WHITE, static=name)
            shape = layer.shape_text
            self._text(f"lshape{col}", x - len(shape) * tiny.cell_w / 2, 512, "tiny", len(shape), DIM, static=shape)
        if spec.saliency != "off":
            self._saliency_legend(spec.saliency, short=spec.hud)
        if spec.hud:
            tiny = self.atlas.fonts["tiny"]
            self._text("hud", PANEL_W - 8 - HUD_CHARS * tiny.cell_w, FRAME_H - tiny.cell_h - 1, "tiny", HUD_CHARS, CYAN)
        edge_color = ATTRIBUTION_FOR if attribution else EDGE_COLOR
        edge_slot = self.slot_edges
        level0 = self.slot_levels
        for src_col, dst_col in itertools.pairwise(centers):
            for _d, (x1, y1, r1) in enumerate(dst_col):
                for s, (x0, y0, r0) in enumerate(src_col):
                    # edge strength = group weight (value slot) x source level (value slot)
                    self.edges.add((x0 + r0, y0, x1 - r1, y1), (*edge_color, 1.0), NONE,
                                   (level0 + s, edge_slot, 0, 0))
                    edge_slot += 1
            level0 += len(src_col)

    def _saliency_legend(self, method: str, short: bool = False) -> None:
        """One line under the diagram: the method, how the maps are scaled (unless ``short``: the
        HUD shares the line), and each map's colour."""
        tiny = self.atlas.fonts["tiny"]
        y = FRAME_H - tiny.cell_h - 1
        head = f"Saliency: {method}" + ("" if short else " (each map / its running max)")
        self._text("sal_head", 12, y, "tiny", len(head), DIM, static=head)
        self._swatches("sal", 12 + (len(head) + 1) * tiny.cell_w, y,
                       (("actor", SALIENCY_ACTOR), ("critic", SALIENCY_CRITIC)))

    def _swatches(self, prefix: str, x: float, y: float, entries: Sequence[tuple[str, tuple[float, ...]]]) -> float:
        """A colour legend in tiny type from ``x``: per entry a swatch and its name in its colour;
        -> the x after the last entry."""
        tiny = self.atlas.fonts["tiny"]
        for name, colour in entries:
            self.rects.add((x, y + 3, 8, 8), (*colour, 1.0))
            self._text(f"{prefix}_{name}", x + 11, y, "tiny", len(name), (*colour, 1.0), static=name)
            x += 11 + (len(name) + 2) * tiny.cell_w
        return x

    def _static_first(self) -> None:
        """Put the items that look the same in every frame of a video first: rects bound to no
        value and no action, and the glyphs of fixed, unbound text (titles, headings, labels).
        They are drawn once per video into a panel image (:class:`FrameRenderer`), the rest per
        frame: ``n_static_rects`` / ``n_static_slots`` items of each kind."""
        static = [r for r in self.rects.rows if not Items.is_bound(r)]
        self.rects = Items(static + [r for r in self.rects.rows if Items.is_bound(r)])
        self.n_static_rects = len(static)
        fixed = set(self._static_fields) | {"title", "subtitle"}
        order = sorted(self.fields, key=lambda n: (n not in fixed, self.fields[n].slot0))
        rows, slot = [], 0
        for name in order:
            f = self.fields[name]
            part = self.glyphs.rows[f.slot0 : f.slot0 + f.length]
            bound = any(Items.binds_text(r) for r in part)
            assert name not in fixed or not bound, f"{name}: fixed text cannot be bound"
            rows += part
            f.slot0, slot = slot, slot + f.length
        self.glyphs = Items(rows)
        self.n_static_slots = sum(self.fields[n].length for n in fixed)

    # -- per-frame packing --------------------------------------------------------------------

    def static_chars(self, spec: PanelSpec) -> np.ndarray:
        """The glyph-slot bytes that never change within this milestone's video."""
        chars = np.full(self.n_slots, 32, np.uint8)
        texts = dict(self._static_fields)
        texts["title"] = f"{spec.game_title} - {spec.algo} Neural Activity Viewer"
        where = f"Progress: {spec.milestone}" if spec.is_percent else f"Milestone: {spec.milestone}"
        texts["subtitle"] = f"Post-Training Evaluation | {where} | lr={format_lr(spec.learning_rate)}"
        for name, text in texts.items():
            self._put(chars, name, text)
        return chars

    def _put(self, chars: np.ndarray, name: str, text: str) -> None:
        f = self.fields[name]
        raw = text[: f.length].ljust(f.length).encode("ascii", "replace")
        chars[..., f.slot0 : f.slot0 + f.length] = np.frombuffer(raw, np.uint8)

    def edge_values(self, edge_weights: Sequence[np.ndarray], per_node: int | None = EDGES_PER_NODE) -> np.ndarray:
        """Flatten per-layer (dst, src) group weights in the order edges were laid out, keeping
        only each destination node's ``per_node`` strongest inputs (the others are 0: not drawn;
        None keeps every edge). Ties go to the lower source index."""
        return np.concatenate([strongest_inputs(w, per_node).reshape(-1) for w in edge_weights]).astype(np.float32)

    def values(self, actions: np.ndarray, probs: np.ndarray, levels: np.ndarray, edges: np.ndarray,
               hist_actions: np.ndarray | None = None, hist_scores: np.ndarray | None = None) -> np.ndarray:
        """(B, n_values) float32 for ``t_values``. History: (B, HISTORY_ACTIONS) action indices (-1
        empty) and (B, HISTORY_SCORES) episode scores divided by the peak :meth:`score_head` names
        (bar heights: 1 is full height, 0 or less an empty bar)."""
        b = len(actions)
        out = np.empty((b, self.n_values), np.float32)
        out[:, SLOT_ACTION] = actions
        out[:, SLOT_ACTION_PROB] = probs[np.arange(b), actions]
        out[:, SLOT_PROBS : self.slot_levels] = probs
        out[:, self.slot_levels : self.slot_edges] = levels
        out[:, self.slot_edges : self.slot_hist_actions] = edges
        out[:, self.slot_hist_actions : self.slot_hist_scores] = -1 if hist_actions is None else hist_actions
        out[:, self.slot_hist_scores :] = 0 if hist_scores is None else hist_scores
        return out

    def frame_chars(self, base: np.ndarray, texts: dict[str, str]) -> np.ndarray:
        chars = base.copy()
        for name, text in texts.items():
            self._put(chars, name, text)
        return chars
