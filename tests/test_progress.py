"""The progress video (``gpurender progress``, ``render --progress-video``) rendered for real from
the bundled demo milestones and probed: its size and frame count, each grid tile against the
milestone's own video, the captions and their live scores against the traces, the sequence's
title cards and clips, the closing card against its PNG, and the chart's points against the
games' returns in the sidecars. Plus the compose pass's scaling, the grid's geometry and the
one-line errors."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
from _video import message_lines, run_cli, start_cli, wait_cli
from PIL import Image

from gpurender.cli import INTERRUPTED, main
from gpurender.config import RenderConfig
from gpurender.demo import GAME, demo_checkpoints
from gpurender.milestones import parse_checkpoint_name
from gpurender.pipeline import render
from gpurender.progress import even_selection, shown_milestones
from gpurender.render.cards import MEAN, POINT, grid_placement
from gpurender.trace import read_trace

FPS = 5
CLIP = 120
"""Frames of the grid run's clip: the 0% agent loses its first game at frame 115 and the others
score at frames 38 and 77 (all deterministic)."""
CLOSING = 4 * FPS  # the closing card lasts 4 s (docs/progress_video.md)
TITLE = 2 * FPS  # each title card of the sequence lasts 2 s
SEQ_CLIP = 10
W, H = 960, 540


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y of RGB pixels, as the videos carry it."""
    rgb = rgb.astype(np.float64)
    return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


def _frames(path: Path, wanted: set[int] | None = None) -> tuple[int, int, int, dict[int, np.ndarray]]:
    """-> (width, height, frame count, {index: Y plane as float}) of the frames ``wanted`` (all: None)."""
    out = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        n = 0
        for n, frame in enumerate(container.decode(stream), 1):
            if wanted is None or n - 1 in wanted:
                out[n - 1] = frame.to_ndarray(format="yuv420p")[: stream.height].astype(np.float64)
        return stream.width, stream.height, n, out


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _moved(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels that differ by more than coding noise: a glyph changed."""
    return int(np.count_nonzero(np.abs(a - b) > 48))


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory):
    """The demo's 4 milestones: their own videos (with traces) and the grid progress video, one job."""
    out = tmp_path_factory.mktemp("grid")
    cfg = RenderConfig(model_dir=tuple(demo_checkpoints()), game=GAME, output_dir=out, clip_seconds=CLIP / FPS,
                       fps=FPS, device="cpu", trace=True, progress_video=True)
    report = render(cfg, progress=False)
    assert not report.failures and report.progress is not None
    return report, out


@pytest.fixture(scope="module")
def scoring_grid(tmp_path_factory: pytest.TempPathFactory):
    """A grid whose games score inside the clip: four milestones that are all the trained Breakout
    PPO of tests/data (it scores at frames 38 and 77; the demo's RoadRunner agents first score
    after ~300 steps), one job, with traces."""
    run = tmp_path_factory.mktemp("scoring") / "milestones"
    run.mkdir()
    for step, pct in ((0, 0), (100, 25), (200, 50), (400, 100)):
        shutil.copy(Path(__file__).parent / "data" / "ppo_breakout_300k.zip", run / f"step_{step}_pct_{pct}.zip")
    cfg = RenderConfig(model_dir=(run,), game="Breakout", output_dir=run.parent / "videos", clip_seconds=CLIP / FPS,
                       fps=FPS, device="cpu", trace=True, progress_video=True, milestone_videos=True)
    report = render(cfg, progress=False)
    assert not report.failures and report.progress is not None
    return report, _frames(report.progress.path, {0, 37, 38, 39, 76, 77})


@pytest.fixture(scope="module")
def grid_frames(grid_run):
    report, _ = grid_run
    return _frames(report.progress.path, {0, 1, 37, 38, 39, 76, 77, CLIP - 1, CLIP, CLIP + CLOSING - 1})


def _own_video(report, k: int) -> Path:
    (video,) = [v.path for v in report.videos if v.milestone == report.progress.milestones[k]]
    return video


# ---------------------------------------------------------------------------------------------
# grid


def test_grid_is_1080p_with_the_clip_then_the_closing_card(grid_run, grid_frames):
    report, out = grid_run
    width, height, n, _ = grid_frames
    assert (width, height) == (1920, 1080)
    assert n == CLIP + CLOSING == report.progress.frames
    assert report.progress.path == out / "training_progress_grid.mp4"
    side = json.loads((out / "training_progress_grid.json").read_text())
    assert side["layout"] == "grid" and side["frames"] == n and side["clip_frames"] == CLIP
    assert side["chart"] == "training_progress_grid_scores.png" and (out / side["chart"]).is_file()
    assert [s["milestone"] for s in side["shown"]] == ["0", "25", "50", "100"]
    for k, shown in enumerate(side["shown"]):  # the same games as the milestones' own videos
        own = json.loads(_own_video(report, k).with_suffix(".json").read_text())
        assert shown["episode_returns"] == [own["episode_returns"]]
        assert shown["checkpoint_sha256"] == own["checkpoint_sha256"]
    assert not [p for p in out.iterdir() if "partial" in p.name or p.name.endswith(".lock")]


def test_each_tile_is_its_milestones_own_frame(grid_run, grid_frames):
    """2 x 2 at full size: tile k of progress frame t is frame t of milestone k's video (outside
    the caption box), and not another milestone's."""
    report, _ = grid_run
    _, _, _, frames = grid_frames
    cells = grid_placement(4).cells
    for t in (1, 77, CLIP - 1):
        own = {k: _frames(_own_video(report, k), {t})[3][t] for k in range(4)}
        below = np.s_[60:, :]  # under the caption box
        for k, (x, y, _, _) in enumerate(cells):
            tile = frames[t][int(y) : int(y) + H, int(x) : int(x) + W]
            err = _mad(tile[below], own[k][below])
            assert err < 1.5 and _moved(tile[below], own[k][below]) < 20, f"frame {t} tile {k}: {err:.2f} off"
            others = [_moved(tile[below], own[j][below]) for j in range(4) if j != k]
            assert min(others) > 100, f"frame {t} tile {k} looks like another milestone's ({others})"


def test_captions_name_the_milestone_and_follow_the_live_score(scoring_grid):
    """Each tile's caption box replaces its panel's header; the label parts differ from milestone
    to milestone, the score parts read alike while the scores are equal, and a score part
    changes exactly where its game's score (the trace) changes."""
    report, (_, _, _, frames) = scoring_grid
    cells = [(int(x), int(y)) for x, y, _, _ in grid_placement(4).cells]
    label = lambda f, x, y: f[y + 6 : y + 48, x + 12 : x + 250]  # noqa: E731
    score = lambda f, x, y: f[y + 6 : y + 48, x + 330 : x + 472]  # noqa: E731
    for k, (x, y) in enumerate(cells):
        own = _frames(_own_video(report, k), {0})[3][0]
        assert _mad(frames[0][y : y + 54, x : x + 480], own[:54, :480]) > 8  # not the panel's title
    labels = [label(frames[0], x, y) for x, y in cells]
    assert min(_mad(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]) > 3
    assert min(_moved(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]) > 100
    scores = [score(frames[0], x, y) for x, y in cells]  # all games at 0 points
    assert max(_moved(scores[0], s) for s in scores[1:]) < 10
    changed = 0
    for k, (x, y) in enumerate(cells):
        trace = [row["score"] for row in read_trace(_own_video(report, k).with_suffix(".trace.jsonl"))]
        for t in (38, 39, 77):
            moved = _moved(score(frames[t], x, y), score(frames[t - 1], x, y))
            assert _moved(label(frames[t], x, y), label(frames[t - 1], x, y)) < 10
            if trace[t] != trace[t - 1]:
                changed += 1
                assert moved > 40, f"tile {k}: the score went {trace[t - 1]} -> {trace[t]} at {t}, the caption stayed"
            else:
                assert moved < 10, f"tile {k}: the caption changed at {t}, the score did not"
    assert changed >= 3  # the trained agents score at frames 38 and 77


def test_closing_card_is_the_chart_png(grid_run, grid_frames):
    report, _ = grid_run
    _, _, _, frames = grid_frames
    first, last = frames[CLIP], frames[CLIP + CLOSING - 1]
    png = np.asarray(Image.open(report.progress.chart_png).convert("RGB"))
    assert png.shape == (1080, 1920, 3)
    assert _mad(first, last) < 0.5
    assert _mad(first, _luma(png)) < 1.5
    assert _mad(frames[CLIP - 1], first) > 10  # the card follows the clip


def _points_in(png: np.ndarray, rgb: tuple[float, float, float], tol: int = 30) -> np.ndarray:
    target = np.array([round(c * 255) for c in rgb])
    return np.all(np.abs(png.astype(int) - target) <= tol, axis=2)


def _check_chart(png: np.ndarray, chart, returns: list[list[float]]) -> None:
    """The chart's points are exactly the games' returns, drawn where the chart says, in the
    point colour, with nothing else in that colour; their heights are one linear function of
    the returns."""
    drawn = [sorted(v for i, v, _, _ in chart.points if i == k) for k in range(len(returns))]
    assert drawn == [sorted(r) for r in returns]
    x0, y0, w, h = (round(v) for v in chart.plot)
    mask = np.zeros(png.shape[:2], bool)  # the point colour inside the plot (headings use it too)
    mask[y0 - 10 : y0 + h + 10, x0 : x0 + w] = _points_in(png, POINT)[y0 - 10 : y0 + h + 10, x0 : x0 + w]
    for _, _, x, y in chart.points:
        assert mask[round(y), round(x)], f"no point drawn at {x:.0f}, {y:.0f}"
    ys, xs = np.nonzero(mask)
    centres = np.array([(x, y) for _, _, x, y in chart.points]).reshape(-1, 2)
    if len(xs):
        assert len(centres), "point-coloured pixels but no point"
        far = np.min(np.hypot(xs[:, None] - centres[None, :, 0], ys[:, None] - centres[None, :, 1]), axis=1)
        assert far.max() <= 9, "point-coloured pixels away from every point"
    values = np.array([v for _, v, _, _ in chart.points])
    heights = []  # each point's centre row, measured in the image
    for _, _, x, y in chart.points:
        rows = np.nonzero(mask[round(y) - 12 : round(y) + 13, round(x)])[0]
        heights.append(round(y) - 12 + (rows.min() + rows.max()) / 2)
    assert np.abs(np.array(heights) - [y for _, _, _, y in chart.points]).max() <= 1.0
    if len(set(values)) >= 2:
        slope, offset = np.polyfit(values, heights, 1)
        assert slope < 0 and np.abs(slope * values + offset - heights).max() <= 1.0
    bars = _points_in(png, MEAN)
    for i, _, y in chart.means:  # the mean bars
        x = round(chart.xs[i])
        assert bars[round(y) - 1 : round(y) + 2, x - 30 : x + 30].any()


def test_chart_points_are_the_sidecars_returns(grid_run):
    """Per milestone: the returns in its own video's sidecar are the chart's points (the 0 %
    agent loses its first game, 0 points, at frame 115; the others finish none in 12 s)."""
    report, _ = grid_run
    returns = [json.loads(_own_video(report, k).with_suffix(".json").read_text())["episode_returns"]
               for k in range(4)]
    assert returns == [[0.0], [], [], []]
    png = np.asarray(Image.open(report.progress.chart_png).convert("RGB"))
    chart = report.progress.chart
    _check_chart(png, chart, returns)
    # the 0-point game sits on the zero line: the first row of the axis colour under the plot's top
    ((_, _, _, y),) = chart.points
    column = png[:, int(chart.plot[0]) + 3]
    rule = np.nonzero(np.all(np.abs(column.astype(int) - (64, 77, 115)) <= 3, axis=1))[0]
    assert abs(rule.max() - y) <= 1


def test_chart_draws_every_return_at_its_height():
    """The chart drawn alone from given returns (several per milestone, equal ones, a milestone
    without any): one point per return at one linear height scale, the mean bars, and nothing
    in the point colour where a milestone finished no game."""
    from gpurender.render import FrameRenderer, Target
    from gpurender.render.atlas import GlyphAtlas
    from gpurender.render.cards import FACES, chart_card
    from gpurender.render.passes import TextPass

    milestones = [parse_checkpoint_name(p) for p in demo_checkpoints()]
    returns = [[0.0, 3.0, 3.0, 11.0], [], [2.0], [25.0, 7.0, 7.0]]
    with FrameRenderer(max_tiles=1) as r:
        r.make_current()
        atlas = GlyphAtlas(FACES)
        text = TextPass(r.ctx, atlas)
        tex = r.ctx.texture((1920, 1080), 4)
        target = Target(r.ctx.framebuffer([tex]))
        sheet, chart = chart_card(atlas, milestones, returns, "Breakout | PPO", "1 game per milestone", "1 s")
        p = r.passes
        sheet.draw(r.ctx, p.rects, p.edges, p.nodes, text, target)
        png = np.frombuffer(target.fbo.read(components=3), np.uint8).reshape(1080, 1920, 3)
        for obj in (sheet, text, target.fbo, tex):
            obj.release()
    _check_chart(png, chart, returns)
    assert [i for i, _, _ in chart.means] == [0, 2, 3]
    x = round(chart.xs[1])
    assert not _points_in(png, POINT)[200:900, x - 40 : x + 40].any()


# ---------------------------------------------------------------------------------------------
# sequence, from the command line as a training callback runs it


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("run")
    (run / "milestones").mkdir()
    for zip_ in demo_checkpoints():
        shutil.copy(zip_, run / "milestones" / zip_.name)
    out = run / "videos"
    proc = run_cli("progress", "--model-dir", run, "--game", GAME, "--output-dir", out, "--layout", "sequence",
                   "--clip-seconds", SEQ_CLIP / FPS, "--fps", FPS, "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_sequence_title_cards_then_each_milestone_full_screen(sequence_run, grid_run):
    proc, out = sequence_run
    video = out / "training_progress_sequence.mp4"
    assert str(video) in proc.stdout
    segment = TITLE + SEQ_CLIP
    wanted = {k * segment + t for k in range(4) for t in (0, TITLE - 1, TITLE, TITLE + SEQ_CLIP - 1)}
    width, height, n, frames = _frames(video, wanted)
    assert (width, height) == (1920, 1080) and n == 4 * segment + CLOSING
    assert json.loads(video.with_suffix(".json").read_text())["title_card_frames"] == TITLE
    report, _ = grid_run
    cards = [frames[k * segment] for k in range(4)]
    for k in range(4):
        card = cards[k]
        assert _mad(card, frames[k * segment + TITLE - 1]) < 0.5  # a still card
        assert np.mean(np.abs(card - np.median(card)) < 2) > 0.9  # mostly the plain background
        assert min(_mad(card, other) for j, other in enumerate(cards) if j != k) > 0.2  # its own text
        for t in (0, SEQ_CLIP - 1):  # the clip: milestone k's frame t, at twice the size
            full = frames[k * segment + TITLE + t]
            half = full.reshape(H, 2, W, 2).mean(axis=(1, 3))
            own = _frames(_own_video(report, k), {t})[3][t]
            game = np.s_[:, 480:]  # the panel's progress text counts a shorter clip
            assert _mad(half[game], own[game]) < 2.0
            assert _mad(half[270:, :480], own[270:, :480]) < 2.0  # the network diagram
    assert not [p for p in out.iterdir() if "partial" in p.name]


# ---------------------------------------------------------------------------------------------
# Ctrl-C, errors, and the parts


def test_interrupted_progress_leaves_nothing(tmp_path: Path):
    out = tmp_path / "out"
    proc = start_cli("progress", "--demo", "--milestones", "0,100", "--output-dir", out, "--layout", "sequence",
                     "--clip-seconds", "60", "--device", "cpu", "--quiet")
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any("partial" in p.name for p in out.iterdir())):
            assert proc.poll() is None, "the render ended before writing anything"
            assert time.monotonic() < deadline, "no partial video appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    finally:
        done = wait_cli(proc, timeout=60)
    assert done.returncode == 130, done.stderr
    assert message_lines(done.stderr) == [INTERRUPTED], done.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["progress", "--demo", "--layout", "diagonal"], "--layout must be one of grid, sequence, got 'diagonal'"),
    (["progress", "--demo", "--workers", "2"], "--workers 2: the progress video draws every milestone in one"),
    (["progress", "--demo", "--ray"], "--ray: the progress video draws every milestone"),
    (["progress", "--demo", "--trace"], "--trace writes each milestone video's trace"),
    (["render", "--demo", "--layout", "sequence"], "--layout is the progress video's layout: add --progress-video"),
    (["progress", "--model-dir", "{empty}"], "no checkpoints (*.zip) in this folder"),
    (["progress", "--demo", "--milestones", "33"], "none of the milestones ['33'] found"),
])
def test_bad_input_is_one_line_error(args: list[str], message: str, tmp_path: Path, capsys):
    args = [a.format(empty=tmp_path) for a in args]
    assert main([*args, "--output-dir", str(tmp_path / "out"), "--quiet"]) == 2
    err = message_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("gpurender: error: ") and message in err[0], err


def test_more_than_16_milestones_grid_shows_an_even_16(caplog):
    milestones = [parse_checkpoint_name(Path(f"pct_{p}.zip")) for p in range(0, 101, 5)]  # 21
    shown, left = shown_milestones("grid", milestones)
    assert len(shown) == 16 and shown[0] == milestones[0] and shown[-1] == milestones[-1]
    assert sorted(shown + left) == milestones and len(left) == 5
    assert "the grid shows 16 of the 21 milestones" in caplog.text
    assert shown_milestones("sequence", milestones) == (milestones, [])
    assert even_selection(5, 16) == [0, 1, 2, 3, 4] and even_selection(17, 16)[-1] == 16


@pytest.mark.parametrize(("n", "cols", "scale"), [(1, 2, 1.0), (3, 2, 1.0), (4, 2, 1.0), (5, 3, 2 / 3),
                                                  (9, 3, 2 / 3), (10, 4, 0.5), (16, 4, 0.5)])
def test_grid_geometry(n: int, cols: int, scale: float):
    p = grid_placement(n)
    assert p.scale == pytest.approx(scale) and len(p.cells) == n
    for x, y, w, h in p.cells:
        assert (w, h) == (1920 / cols, 1080 / cols) and 0 <= x <= 1920 - w and 0 <= y <= 1080 - h
    boxes = {(round(x), round(y)) for x, y, _, _ in p.cells}
    assert len(boxes) == n  # no two tiles on one another


def test_compose_scales_tiles_exactly():
    """The compose pass at 1:1 equals the image copy, at 2x repeats each texel 2 x 2 times, and at
    1/2 is the mean of each 2 x 2 block."""
    from gpurender.render import FrameRenderer, Target
    from gpurender.render.passes import ComposePass

    rng = np.random.default_rng(1)
    with FrameRenderer(max_tiles=4) as r:
        r.make_current()
        tiles = rng.integers(0, 256, (4, H, W, 4), np.uint8)
        tiles[..., 3] = 255
        r.t_rgb.write(tiles.tobytes())
        compose = ComposePass(r.ctx)
        tex = r.ctx.texture((1920, 1080), 4)
        target = Target(r.ctx.framebuffer([tex]))

        def read() -> np.ndarray:
            return np.frombuffer(target.fbo.read(components=4), np.uint8).reshape(1080, 1920, 4)[..., :3]

        compose.render(r.frame_target, target, [(2, (960, 0, W, H))], 1.0)
        assert np.array_equal(read()[:H, W:], tiles[2, ..., :3])
        target.fbo.clear()
        assert r.copy_tile(2, tex, 960, 0)
        assert np.array_equal(read()[:H, W:], tiles[2, ..., :3])
        compose.render(r.frame_target, target, [(1, (0, 0, 1920, 1080))], 2.0)
        assert np.array_equal(read(), tiles[1, ..., :3].repeat(2, axis=0).repeat(2, axis=1))
        compose.render(r.frame_target, target, [(3, (480, 270, 480, 270))], 0.5)
        box = tiles[3, ..., :3].reshape(270, 2, 480, 2, 3).astype(float).mean(axis=(1, 3))
        assert np.abs(read()[270:540, 480:960].astype(float) - box).max() <= 1.0
        for obj in (compose, target.fbo, tex):
            obj.release()


def test_gpu_branch_converts_like_the_software_branch(tmp_path: Path):
    """A progress frame as a GPU makes it (the 1080p I420 shader pass, forced here on llvmpipe)
    equals the software branch's OpenCV conversion of the same frame within rounding; and a
    progress video closed before it finished leaves no file."""
    from gpurender.encode import rgba_to_i420
    from gpurender.games import resolve_game
    from gpurender.network import AgentInfo
    from gpurender.progress import ProgressPlan, ProgressVideo
    from gpurender.render import FrameRenderer

    milestones = [parse_checkpoint_name(p) for p in demo_checkpoints()[:2]]
    agents = {m: AgentInfo("PPO", 4, 2.5e-4, (), ()) for m in milestones}
    cfg = RenderConfig(fps=FPS, progress_video=True)
    rng = np.random.default_rng(2)
    with FrameRenderer(max_tiles=2) as r:
        r.make_current()
        tiles = rng.integers(0, 256, (2, H, W, 4), np.uint8)
        r.t_rgb.write(tiles.tobytes())
        r.software = False
        plan = ProgressPlan(tmp_path / "training_progress_grid.mp4", "grid", tuple(milestones), ())
        video = ProgressVideo(cfg, resolve_game(GAME), r, plan, agents, "libx264")
        try:
            video.frame([(1, 0, 3.0), (0, 1, 12.0)])
            gpu = video._read_frame()
            cpu = rgba_to_i420(np.ascontiguousarray(video._read_rgba()))
        finally:
            video.close()
    assert gpu.shape == cpu.shape == (1620, 1920)
    assert np.abs(gpu.astype(int) - cpu).max() <= 2
    assert list(tmp_path.iterdir()) == []
