"""The preview window: it shows exactly the video's frame, and its keys do what the help says.

Window tests are marked ``display``: they use $DISPLAY, or start their own Xvfb when it is
installed (CI runs ``xvfb-run -a python -m pytest``), and are skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpurender.config import PreviewConfig, RenderConfig
from gpurender.preview import NO_DISPLAY, Command, Pacer, help_text, key_binding, letterbox

REPO = Path(__file__).resolve().parents[1]


# -- no window needed -----------------------------------------------------------------------------

def test_letterbox_keeps_16_9_and_centres() -> None:
    assert letterbox(960, 540) == (0, 0, 960, 540)
    assert letterbox(1920, 1080) == (0, 0, 1920, 1080)  # HiDPI framebuffer of a 960x540 window
    x, y, w, h = letterbox(1280, 600)
    assert (y, h) == (0, 600) and abs(w / h - 16 / 9) < 0.01 and x == (1280 - w) // 2
    x, y, w, h = letterbox(800, 800)
    assert (x, w) == (0, 800) and h == 450 and y == 175


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        assert dt > 0
        self.now += dt


def test_pacer_holds_the_grid_and_resets_instead_of_bursting() -> None:
    clock = _FakeClock()
    pacer = Pacer(clock, clock.sleep)
    period = 1 / 30
    starts, actual = [], []
    for k in range(10):
        starts.append(pacer.wait(period))
        actual.append(clock.now)
        clock.now += 0.010 if k != 4 else 0.050  # frame 4 overruns by less than a frame
    assert starts == pytest.approx([k * period for k in range(10)])  # no drift
    assert actual[5] == pytest.approx(4 * period + 0.05)  # frame 5 starts late, at once...
    assert actual[6:] == pytest.approx(starts[6:])  # ...and frame 6 is back on the grid
    assert pacer.resets == 0
    clock.now += 0.2  # a stall of several frames: restart from now, one frame, no burst
    stalled_at = clock.now
    assert pacer.wait(period) == pytest.approx(stalled_at)
    clock.now += 0.001
    assert pacer.wait(period) == pytest.approx(stalled_at + period)
    assert pacer.resets == 1


def test_key_table() -> None:
    import glfw

    press, repeat, release = glfw.PRESS, glfw.REPEAT, glfw.RELEASE
    assert key_binding(glfw.KEY_SPACE, press, 0).command is Command.PAUSE
    assert key_binding(glfw.KEY_SPACE, release, 0) is None
    assert key_binding(glfw.KEY_SPACE, repeat, 0) is None  # holding space does not flicker the pause
    assert key_binding(glfw.KEY_RIGHT, repeat, 0).command is Command.STEP  # holding Right steps on
    assert key_binding(glfw.KEY_TAB, press, 0).command is Command.NEXT
    assert key_binding(glfw.KEY_TAB, press, glfw.MOD_SHIFT).command is Command.PREVIOUS
    assert key_binding(glfw.KEY_EQUAL, repeat, glfw.MOD_SHIFT).command is Command.FASTER  # "+" is Shift+=
    assert key_binding(glfw.KEY_KP_SUBTRACT, press, 0).command is Command.SLOWER
    assert key_binding(glfw.KEY_1, press, 0) == (Command.MILESTONE, 0, False)
    assert key_binding(glfw.KEY_KP_9, press, 0) == (Command.MILESTONE, 8, False)
    assert key_binding(glfw.KEY_Q, press, 0).command is key_binding(glfw.KEY_ESCAPE, press, 0).command is Command.QUIT
    assert key_binding(glfw.KEY_X, press, 0) is None
    from gpurender.preview import KEYS, SHIFT_KEYS

    assert {b.command for b in (*KEYS.values(), *SHIFT_KEYS.values())} == set(Command)  # every command has a key
    assert "Shift+Tab" in help_text() and "Esc, q" in help_text()


@pytest.mark.parametrize("display_var", [None, ":987"], ids=["unset", "unreachable"])
def test_no_display_is_one_line_and_exit_2(tmp_path: Path, display_var: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if display_var is not None:
        env["DISPLAY"] = display_var  # set, but no X server there: glfw.init fails
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "gpurender", "preview", "--model-dir", str(tmp_path)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    if display_var is None:
        assert lines == [f"gpurender: error: {NO_DISPLAY}"]
    else:
        assert lines[0].startswith(f"gpurender: error: {NO_DISPLAY} (glfw: ")


# -- window tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def display():
    """$DISPLAY if set, else a private Xvfb for this module, else skip."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no DISPLAY and no Xvfb: apt-get install xvfb xauth, or run under xvfb-run -a")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1600x900x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    number = b""
    while not number.endswith(b"\n") and select.select([read_fd], [], [], 20)[0]:
        chunk = os.read(read_fd, 64)  # Xvfb may write the number and the newline separately
        if not chunk:
            break
        number += chunk
    if not number.strip():
        proc.kill()
        os.close(read_fd)
        pytest.skip("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number.decode().strip()}"
    try:
        yield os.environ["DISPLAY"]
    finally:
        del os.environ["DISPLAY"]
        proc.terminate()
        proc.wait(10)
        os.close(read_fd)


@pytest.fixture(scope="module")
def two_milestones(tmp_path_factory: pytest.TempPathFactory, ppo_checkpoint: Path, dqn_checkpoint: Path) -> Path:
    """A run folder with two real checkpoints of different kinds (policy and Q network)."""
    run = tmp_path_factory.mktemp("run")
    shutil.copy(ppo_checkpoint, run / "pct_10.zip")
    shutil.copy(dqn_checkpoint, run / "pct_50.zip")
    return run


def _config(model_dir: Path) -> RenderConfig:
    return RenderConfig(model_dir=(model_dir,), device="cpu")


def _preview_config(output_dir: Path) -> PreviewConfig:
    return PreviewConfig(uncapped=True, output_dir=output_dir, encoder="x264")


@pytest.fixture(scope="module")
def preview(display, two_milestones: Path, tmp_path_factory: pytest.TempPathFactory):
    from gpurender.preview import Preview

    pv = Preview(_config(two_milestones), _preview_config(tmp_path_factory.mktemp("preview_out")))
    yield pv
    pv.close()


def _press(pv, key: int, mods: int = 0) -> None:
    import glfw

    pv.handle_key(key, glfw.PRESS, mods)


def _title(pv) -> str:
    """The window's title as X has it (GLFW 3.4 can read it back), else as the preview set it."""
    import glfw

    if hasattr(glfw, "get_window_title"):
        title = glfw.get_window_title(pv.window.handle)
        assert title == pv.title
        return title
    return pv.title


def _frames_in(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.display
def test_window_shows_the_video_frame(preview) -> None:
    import glfw
    from PIL import Image

    assert preview.run(max_frames=5) == 5
    assert glfw.get_framebuffer_size(preview.window.handle) == (960, 540)
    frame = preview.frame_rgb()
    assert frame.shape == (540, 960, 3) and frame.std() > 10  # a drawn panel, not a cleared target
    shown = preview.window_rgb()  # the window's default framebuffer, through present.glsl
    assert np.abs(shown.astype(int) - frame).max() <= 2
    _press(preview, glfw.KEY_S)
    shots = sorted(preview.output_dir.glob("*.png"))
    assert len(shots) == 1
    assert np.array_equal(np.asarray(Image.open(shots[0]).convert("RGB")), frame)


@pytest.mark.display
def test_unwritable_output_folder_does_not_end_the_session(preview, tmp_path: Path, capsys) -> None:
    import glfw

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    folder, preview.output_dir = preview.output_dir, blocker / "shots"
    try:
        _press(preview, glfw.KEY_S)
        _press(preview, glfw.KEY_R)
    finally:
        preview.output_dir = folder
    assert not preview.recording
    assert capsys.readouterr().err.count("gpurender: error:") == 2
    assert preview.tick()


@pytest.mark.display
def test_resized_window_is_letterboxed(preview) -> None:
    import glfw
    from PIL import Image

    glfw.set_window_size(preview.window.handle, 1280, 600)
    for _ in range(20):
        glfw.poll_events()
        if preview.window.framebuffer_size == (1280, 600):
            break
    fb_w, fb_h = preview.window.framebuffer_size
    try:
        preview.run(max_frames=1)
        shown = preview.window_rgb().astype(int)
        x, y, w, h = letterbox(fb_w, fb_h)
        assert x > 0 and w / h == pytest.approx(16 / 9, abs=0.01)
        assert shown[:, :x].max() == 0 and shown[:, x + w :].max() == 0  # black bars
        scaled = np.asarray(Image.fromarray(preview.frame_rgb()).resize((w, h), Image.BILINEAR)).astype(int)
        assert np.abs(shown[y : y + h, x : x + w] - scaled).mean() < 6
    finally:
        glfw.set_window_size(preview.window.handle, 960, 540)
        for _ in range(20):
            glfw.poll_events()
            if preview.window.framebuffer_size == (960, 540):
                break


@pytest.mark.display
def test_pause_and_single_step(preview) -> None:
    import glfw

    assert preview.tick() and not preview.paused
    _press(preview, glfw.KEY_SPACE)
    n = preview.frames
    assert [preview.tick() for _ in range(3)] == [False] * 3
    assert preview.frames == n
    assert "PAUSED" in preview.title
    _press(preview, glfw.KEY_RIGHT)
    assert preview.tick() is True
    assert preview.frames == n + 1
    assert preview.tick() is False and preview.frames == n + 1
    _press(preview, glfw.KEY_RIGHT)
    _press(preview, glfw.KEY_RIGHT)  # requests do not queue up: one step per tick while paused
    preview.tick()
    preview.tick()
    assert preview.frames == n + 2
    _press(preview, glfw.KEY_SPACE)
    assert preview.tick() and preview.frames == n + 3


@pytest.mark.display
def test_milestone_switch_and_speed_keys(preview) -> None:
    import glfw

    preview.select(0)
    assert "milestone 10% PPO (1/2)" in _title(preview)
    frames = preview.frames
    preview.run(max_frames=1)
    rollout = preview.rollout
    assert rollout.units == [preview.units[0]]
    history = preview.panel._hist_actions.copy()  # the game's executed actions so far
    state, score, scores = rollout.state, rollout.scores.current.copy(), rollout.scores
    ppo_levels = preview.units[0].normaliser.running.clone()
    _press(preview, glfw.KEY_TAB)
    assert "milestone 50% DQN (2/2)" in _title(preview)
    assert rollout.units == [preview.units[1]]  # the DQN's forward, with its own level normaliser
    assert preview.units[1].normaliser is not preview.units[0].normaliser
    assert rollout.state is state and np.array_equal(rollout.scores.current, score)  # the same game, same score
    assert np.array_equal(preview.panel._hist_actions, history)  # the strip goes on with the game
    frames += 1
    preview.run(max_frames=2)  # the game goes on under the other agent
    assert preview.frames == frames + 2
    assert preview.rollout is rollout and rollout.scores is scores
    assert np.array_equal(preview.units[0].normaliser.running, ppo_levels)  # the idle milestone's scale is kept
    assert preview.frame_rgb().std() > 10
    _press(preview, glfw.KEY_TAB, glfw.MOD_SHIFT)
    assert preview.current == 0
    _press(preview, glfw.KEY_2)
    assert preview.current == 1
    _press(preview, glfw.KEY_9)  # no ninth milestone: ignored
    assert preview.current == 1
    speed = preview.speed
    _press(preview, glfw.KEY_EQUAL, glfw.MOD_SHIFT)
    assert preview.speed == speed * 2 and preview.period == pytest.approx(1 / (30 * speed * 2))
    _press(preview, glfw.KEY_MINUS)
    assert preview.speed == speed


@pytest.mark.display
def test_help_overlay_is_window_only(preview) -> None:
    import glfw

    preview.run(max_frames=1)
    _press(preview, glfw.KEY_H)
    try:
        assert preview.help_visible
        shown = preview.window_rgb().astype(int)
        text = preview.overlay.box.text
        assert text[0].startswith("gpurender preview - keys") and text[-1].startswith(f"frame {preview.frames:,}")
        assert any(line.startswith(f"> {preview.current + 1} ") for line in text)  # the milestone playing
        frame = preview.frame_rgb()
        assert np.abs(shown - frame).max() > 50  # the box is on screen...
        preview.run(max_frames=1)
        assert preview.frame_rgb().std() > 10  # ...but never in the frame itself
    finally:
        _press(preview, glfw.KEY_H)
    assert np.abs(preview.window_rgb().astype(int) - preview.frame_rgb()).max() <= 2


@pytest.mark.display
def test_record_toggle_writes_what_was_shown(preview) -> None:
    import glfw

    _press(preview, glfw.KEY_R)
    assert preview.recording and "REC" in preview.title
    preview.run(max_frames=4)
    _press(preview, glfw.KEY_SPACE)  # paused frames are not new frames
    preview.tick()
    _press(preview, glfw.KEY_RIGHT)
    preview.tick()
    _press(preview, glfw.KEY_SPACE)
    shown = preview.recorded_frames
    path = preview.recording_path
    _press(preview, glfw.KEY_R)
    assert not preview.recording
    assert shown == 5
    assert path.is_file() and _frames_in(path) == shown
    assert not list(path.parent.glob(".*partial*"))


@pytest.mark.display
def test_closing_mid_recording_finalises_the_mp4(display, ppo_checkpoint: Path, tmp_path: Path) -> None:
    import glfw

    from gpurender.preview import Preview

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ppo_checkpoint, run / "pct_100.zip")
    pv = Preview(_config(run), _preview_config(tmp_path / "out"))
    try:
        _press(pv, glfw.KEY_R)
        path = pv.recording_path
        assert pv.run(max_frames=3) == 3
        glfw.set_window_should_close(pv.window.handle, True)  # what the close button does
        assert pv.run() == 0
    finally:
        pv.close()
    assert path.is_file() and _frames_in(path) == 3
    assert not list(path.parent.glob(".*partial*"))


@pytest.mark.display
def test_run_preview_stops_after_max_frames(display, ppo_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    from gpurender.preview import run_preview

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ppo_checkpoint, run / "pct_100.zip")
    threads = torch.get_num_threads()
    try:
        pcfg = PreviewConfig(max_frames=2, output_dir=tmp_path / "out", visible=False)
        assert run_preview(_config(run), pcfg) == 0
        assert torch.get_num_threads() == 1  # batch-1 inference on CPU leaves the cores to drawing
    finally:
        torch.set_num_threads(threads)


def test_preview_draws_saliency(display) -> None:
    """``--saliency`` in the preview: the maps over the game and the legend, nothing else changed
    (tests/test_saliency_render.py checks the drawing itself)."""
    from gpurender.demo import GAME, demo_checkpoints
    from gpurender.preview import Preview
    from gpurender.render.layout import FRAME_H, PANEL_W

    frames = {}
    for method in ("off", "perturbation"):
        cfg = RenderConfig(model_dir=tuple(demo_checkpoints()), game=GAME, milestones=("100",), device="cpu",
                           saliency=method)
        pv = Preview(cfg, PreviewConfig(uncapped=True, visible=False, encoder="x264"))
        try:
            for _ in range(6):
                pv.step()
            frames[method] = pv.frame_rgb().astype(np.int16)
        finally:
            pv.close()
    diff = np.abs(frames["perturbation"] - frames["off"]).max(axis=-1)
    assert (diff[:, PANEL_W:] > 30).sum() > 200  # the maps over the game
    assert (diff[FRAME_H - 13 :, : PANEL_W - 8] > 60).sum() > 100  # the legend
    assert (diff[: FRAME_H - 15, :PANEL_W] > 0).sum() == 0  # the rest of the panel is the same


def test_preview_draws_attribution_and_hud(display) -> None:
    from _panel import HUD, PanelReader, demo_layout, luma

    from gpurender.demo import GAME, demo_checkpoints
    from gpurender.preview import Preview
    from gpurender.render.layout import BACKGROUND, CYAN

    cfg = RenderConfig(model_dir=tuple(demo_checkpoints()), game=GAME, milestones=("100",), device="cpu",
                       network_view="attribution", hud=True)
    pv = Preview(cfg, PreviewConfig(uncapped=True, visible=False, encoder="x264"))
    try:
        for _ in range(4):
            pv.step()
        frame = pv.frame_rgb()
        levels = pv.panel.unpack(pv.rollout.act()).levels  # the next step's: signed, scaled per frame
    finally:
        pv.close()
    assert levels.min() < 0 < levels.max()
    layout = demo_layout("attribution", hud=True)
    y = np.asarray(luma(np.moveaxis(frame[..., :3] / 255.0, -1, 0)), np.float32)
    text, _ = PanelReader(layout).read(y, "hud", CYAN, BACKGROUND)
    fps, infer, draw = HUD.fullmatch(text.strip()).groups()
    assert float(fps) > 0 and float(infer) > 0 and float(draw) > 0
    assert PanelReader(layout).read(y, "net_head", CYAN, BACKGROUND)[0] == "Attribution (grad x activation)"
