"""``--saliency``: the maps drawn over the game, where and in what colours, their legend, their
trace; and that saliency changes nothing else (length, frames, panel numbers)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import av
import numpy as np
import pytest
from _video import run_cli

from gpurender.config import RenderConfig
from gpurender.demo import GAME, demo_checkpoints
from gpurender.pipeline import render
from gpurender.render.layout import FRAME_H, PANEL_W, SALIENCY_ACTOR, SALIENCY_ALPHA, SALIENCY_CRITIC
from gpurender.trace import read_trace, saliency_path, trace_path

MILESTONES = ("50", "100")
CLIP = 0.8


@functools.cache
def _rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same two demo milestones rendered without saliency and with each method (with traces)."""
    root = tmp_path_factory.mktemp("saliency")
    for method in ("off", "perturbation", "gradient"):
        cfg = RenderConfig(model_dir=tuple(demo_checkpoints()), game=GAME, milestones=MILESTONES,
                           output_dir=root / method, clip_seconds=CLIP, seed=0, saliency=method, trace=method != "off")
        report = render(cfg, progress=False)
        assert not report.failures and len(report.videos) == len(MILESTONES)
    return {method: root / method for method in ("off", "perturbation", "gradient")}


def _upsampled(maps: np.ndarray) -> np.ndarray:
    """(T, 2, 84, 84) -> (T, 2, 540, 480): bilinear, map texel centres at (i + 0.5) / 84 of the game
    rectangle (the whole 210 x 160 screen that the 84 x 84 observation is resized from)."""

    def taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.clip((np.arange(n) + 0.5) / n * 84 - 0.5, 0, 83)
        i0 = np.floor(u).astype(int)
        return i0, np.minimum(i0 + 1, 83), u - i0

    y0, y1, fy = taps(FRAME_H)
    x0, x1, fx = taps(PANEL_W)
    m = maps.astype(np.float32)
    top = m[..., y0, :][..., x0] * (1 - fx) + m[..., y0, :][..., x1] * fx
    bottom = m[..., y1, :][..., x0] * (1 - fx) + m[..., y1, :][..., x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.mark.parametrize("method", ["perturbation", "gradient"])
def test_maps_drawn_where_and_as_traced(renders: dict[str, Path], method: str) -> None:
    for off_video in sorted(renders["off"].glob("*.mp4")):
        video = renders[method] / off_video.name
        off, on = _rgb(off_video), _rgb(video)
        assert on.shape == off.shape and len(on) == round(CLIP * 30) == 24
        maps = np.load(saliency_path(video))
        assert maps.shape == (len(on), 2, 84, 84) and maps.dtype == np.float16
        assert 0.0 <= maps.min() and maps.max() == 1.0  # each map / its running max: the peak frame is 1
        trace = read_trace(trace_path(video))
        scales = np.array([r["saliency_scale"] for r in trace])
        assert scales.shape == (len(on), 2) and np.all(scales > 0) and np.all(np.diff(scales, axis=0) >= 0)
        # the panel's numbers do not depend on the method (nor on saliency: the off frames' panels agree)
        other = read_trace(trace_path(renders["gradient" if method == "perturbation" else "perturbation"]
                                      / off_video.name))
        assert [r["action"] for r in trace] == [r["action"] for r in other]

        probe = slice(None, None, 3)  # every third frame: enough, and a third of the arithmetic
        s = _upsampled(maps[probe])
        game_on, game_off = on[probe, :, PANEL_W:], off[probe, :, PANEL_W:]
        a = SALIENCY_ALPHA * s[:, 0, ..., None]
        c = SALIENCY_ALPHA * s[:, 1, ..., None]
        total = a + c
        colour = (np.array(SALIENCY_ACTOR) * a + np.array(SALIENCY_CRITIC) * c) * 255 / np.maximum(total, 1e-6)
        expected = game_off + (colour - game_off) * np.minimum(total, 1.0)
        high, zero = s.max(axis=1) > 0.3, s.max(axis=1) < 1e-3
        changed = np.abs(game_on - game_off).mean(-1)
        model = np.abs(game_on - expected).mean(-1)
        assert high.sum() > 500 and changed[high].mean() > 25, "the maps are not visible where they are high"
        assert model[high].mean() < 6 and model.mean() < 2, \
            "the drawn colours are not the traced maps blended at their place"
        if method == "perturbation":  # gradient maps are nowhere exactly 0
            assert zero.mean() > 0.02  # enough map-free pixels to check (tens of thousands)
            assert changed[zero].mean() < 1.0 and np.percentile(changed[zero], 99) <= 6, \
                "the game changed where no map is"
        # the legend under the diagram names the method; without saliency that strip is empty
        legend_on, legend_off = on[:, FRAME_H - 13 :, : PANEL_W - 8], off[:, FRAME_H - 13 :, : PANEL_W - 8]
        assert (np.abs(legend_on - legend_off).max(axis=-1) > 60).mean() > 0.02
        side = json.loads(video.with_suffix(".json").read_text())
        assert side["saliency"] == method and side["frames"] == len(on)


def test_off_sends_no_maps(renders: dict[str, Path]) -> None:
    for video in renders["off"].glob("*.mp4"):
        assert not saliency_path(video).exists()
        assert json.loads(video.with_suffix(".json").read_text())["saliency"] == "off"


def test_bad_saliency_is_one_line_exit_2() -> None:
    done = run_cli("render", "--demo", "--saliency", "foo", timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--saliency must be one of off, perturbation, gradient, got 'foo'" in lines[0]



@pytest.mark.parametrize(("text", "value"), [("off", "off"), ("perturbation", "perturbation"),
                                             ("gradient", "gradient"), ("foo", None)])
def test_yaml_saliency(tmp_path: Path, text: str, value: str | None) -> None:
    from gpurender.config import read_yaml_config
    from gpurender.errors import GpurenderError

    path = tmp_path / "config.yaml"
    path.write_text(f"recording:\n  saliency: {text}\n")
    if value is None:
        with pytest.raises(GpurenderError, match=r"recording\.saliency must be one of off, perturbation, gradient"):
            read_yaml_config(path)
    else:
        assert read_yaml_config(path) == {"saliency": value}
