"""The preview's state: one game played by the current milestone's agent through the rollout core,
every milestone's panel, the pace, recording, screenshots and the HUD title."""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

import moderngl
import numpy as np
import torch
from PIL import Image

from gpurender.agents import pick_device
from gpurender.config import PreviewConfig, RenderConfig
from gpurender.encode import EncoderThread, EncodeSettings, VideoWriter, choose_encoder
from gpurender.envs import make_atari
from gpurender.errors import GpurenderError
from gpurender.games import resolve_game
from gpurender.milestones import find_milestones
from gpurender.panel import MilestonePanel
from gpurender.preview.overlay import HelpOverlay
from gpurender.preview.window import Command, KeyBinding, Pacer, Window, key_binding, letterbox
from gpurender.protocol import SaliencyNormaliser
from gpurender.render import FrameRenderer
from gpurender.render.layout import hud_text
from gpurender.render.passes import PresentPass
from gpurender.rollout import ForwardUnit, Rollout, forward_units
from gpurender.saliency import SaliencyComputer
from gpurender.simulate import load_agents

MIN_SPEED, MAX_SPEED = 1 / 16, 64.0
PAUSED_WAIT_S = 0.05
TITLE_EVERY_S = 0.25
FPS_WINDOW_S = 1.0


class Preview:
    """A live window on the render pipeline: one game, every milestone's agent, one drawn frame per step.

    Drive it with :meth:`run`, or step by step with :meth:`tick` (one pass of the loop: input,
    pacing, maybe a frame) and :meth:`step` (one frame, now). :meth:`close` finishes a recording.
    """

    def __init__(self, cfg: RenderConfig, pcfg: PreviewConfig | None = None) -> None:
        pcfg = pcfg or PreviewConfig()
        self.cfg = cfg
        self.game = resolve_game(cfg.game)
        self.encoder = pcfg.encoder
        self.output_dir = pcfg.output_dir
        """Where screenshots and recordings go."""
        self.speed = min(MAX_SPEED, max(MIN_SPEED, pcfg.speed))
        self.uncapped = pcfg.uncapped
        self.paused = False
        self.help_visible = False
        self.frames = 0
        """Frames drawn (agent steps taken) so far."""
        self.last_frame_start = 0.0
        """``perf_counter()`` at the start of the latest frame."""
        self.window: Window | None = None
        self.renderer: FrameRenderer | None = None
        self.rollout: Rollout | None = None
        self.present: PresentPass | None = None
        self.overlay: HelpOverlay | None = None
        self._encoder: EncoderThread | None = None
        self.recording_path: Path | None = None
        self.recorded_frames = 0
        self._step_requested = False
        self.pacer = Pacer()
        self._dirty = True
        self._starts: collections.deque[float] = collections.deque(maxlen=1000)
        """Start times of the frames of the last second (the HUD's fps)."""
        self._ms = {"infer": 0.0, "env": 0.0, "draw": 0.0}
        self.frame_ms = dict(self._ms)
        """Milliseconds of the latest frame: inference, draw (pack, draw, read back when recording,
        present, swap), env step."""
        self._title_at = 0.0
        self._commands: dict[Command, Callable[[int], object]] = {
            Command.QUIT: lambda _: self.window.request_close(),
            Command.PAUSE: lambda _: self.set_paused(not self.paused),
            Command.STEP: lambda _: self.request_step(),
            Command.FASTER: lambda _: self.set_speed(self.speed * 2),
            Command.SLOWER: lambda _: self.set_speed(self.speed / 2),
            Command.NEXT: lambda _: self.select(self.current + 1),
            Command.PREVIOUS: lambda _: self.select(self.current - 1),
            Command.MILESTONE: lambda n: n < len(self.panels) and self.select(n),
            Command.SCREENSHOT: lambda _: self._save(self.screenshot),
            Command.RECORD: lambda _: self._save(self.toggle_recording),
            Command.HELP: lambda _: self.show_help(not self.help_visible),
        }
        try:
            self._open(pcfg.window_size, pcfg.visible)
        except BaseException:
            self.close()
            raise

    def _open(self, window_size: tuple[int, int], visible: bool) -> None:
        cfg = self.cfg
        self.window = Window("gpurender preview", window_size)  # no display: say so first
        milestones = find_milestones(cfg.model_dir, cfg.milestones)
        self.ctx = moderngl.create_context(require=330)
        self.renderer = FrameRenderer(ctx=self.ctx, max_tiles=1)
        device = pick_device(cfg.device)
        failures: list[tuple[Path, str]] = []
        loaded = load_agents(cfg, self.game, device, milestones, failures)
        if not loaded:
            raise GpurenderError(f"no milestone could be loaded: {failures[0][1]}" if failures
                                 else "no milestone to show")
        self.panels = [MilestonePanel(m, agent.info, self.game, self.renderer, cfg.saliency, cfg.network_view, cfg.hud)
                       for m, agent in loaded]
        self.saliency: list[tuple[SaliencyComputer, SaliencyNormaliser]] = []
        """With ``--saliency``: per milestone, its maps' computer and their running maxima."""
        if cfg.saliency != "off":
            self.saliency = [(SaliencyComputer([agent], cfg.saliency), SaliencyNormaliser()) for _, agent in loaded]
        self.units: list[ForwardUnit] = [forward_units([agent], 1, stack=False)[0] for _, agent in loaded]
        """One forward per milestone, each with its own level normaliser; the current one plays."""
        self.current = 0
        self.present = PresentPass(self.ctx)
        self.overlay = HelpOverlay(self.renderer, [f"{p.agent.algo:<6} {p.milestone.display}" for p in self.panels])
        self.rollout = Rollout(make_atari(self.game, [cfg.seed], cfg.backend), self.units[:1], device,
                               attribution=cfg.network_view == "attribution")
        self.window.on_key(self.handle_key)
        self.window.on_damage(self._mark_dirty)
        self._update_title(force=True)
        if visible:
            self.window.show()

    # -- state ---------------------------------------------------------------------------------

    @property
    def panel(self) -> MilestonePanel:
        """The milestone whose agent is playing."""
        return self.panels[self.current]

    @property
    def period(self) -> float:
        """Seconds per frame at the current speed."""
        return 1.0 / (self.cfg.fps * self.speed)

    @property
    def recording(self) -> bool:
        return self._encoder is not None

    @property
    def fps(self) -> float:
        """Frames per second reached over the last second."""
        s = self._starts
        return (len(s) - 1) / (s[-1] - s[0]) if len(s) > 1 and s[-1] > s[0] else 0.0

    @property
    def title(self) -> str:
        """The window's title: the HUD."""
        return self.window.title

    @property
    def should_close(self) -> bool:
        return self.window.should_close

    def _mark_dirty(self) -> None:
        self._dirty = True

    def select(self, index: int) -> None:
        """Hand the game to milestone ``index``'s agent: the game goes on, and so do the panel's
        action and score histories."""
        index %= len(self.panels)
        if index != self.current:
            self.panels[index].continue_history(self.panel)
        self.current = index
        self.rollout.units = [self.units[index]]
        self._dirty = True
        self._update_title(force=True)

    def set_speed(self, speed: float) -> None:
        self.speed = min(MAX_SPEED, max(MIN_SPEED, speed))
        self.pacer.reset()  # restart the schedule at the new period
        self._update_title(force=True)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.pacer.reset()

    def show_help(self, visible: bool) -> None:
        """Show or hide the help overlay (in the window only)."""
        self.help_visible = visible

    def request_step(self) -> None:
        """While paused, take one step at the next :meth:`tick` (requests do not queue up)."""
        if self.paused:
            self._step_requested = True

    # -- input ---------------------------------------------------------------------------------

    def handle_key(self, key: int, action: int, mods: int) -> None:
        """React to one key event (the glfw key callback; tests call it directly)."""
        binding: KeyBinding | None = key_binding(key, action, mods)
        if binding is None:
            return
        self._commands[binding.command](binding.arg)
        self._dirty = True
        self._update_title(force=True)

    def _save(self, write: Callable[[], object]) -> None:
        try:
            write()
        except (GpurenderError, OSError) as exc:  # an unwritable folder must not end the session
            print(f"gpurender: error: {exc}", file=sys.stderr)

    # -- one frame -----------------------------------------------------------------------------

    def step(self) -> None:
        """Draw the current game state as the next frame, show it, then advance the game one step."""
        t0 = time.perf_counter()
        self.last_frame_start = t0
        self._starts.append(t0)
        while len(self._starts) > 2 and self._starts[0] < t0 - FPS_WINDOW_S:
            self._starts.popleft()
        panel, rollout = self.panel, self.rollout
        out = panel.unpack(rollout.act())
        maps = None
        if self.saliency:
            computer, normalise = self.saliency[self.current]
            raw = computer.maps(rollout.state.obs, out.actions)
            maps, _ = normalise(raw.actor, raw.critic)
        t1 = time.perf_counter()
        hud = hud_text(self.fps or None, *(self._ms[k] if self.frames else None for k in ("infer", "draw"))) \
            if panel.spec.hud else ""
        values, chars = panel.pack(self.frames, 0, out, rollout.scores.current, rollout.state.lives, hud)
        r = self.renderer
        r.begin(1)
        r.draw(panel.spec, values, chars, rollout.state.screens, saliency=maps)
        if self._encoder is not None:
            self._encoder.submit(r.read_yuv(1)[0])
            self.recorded_frames += 1
        self._show()
        t2 = time.perf_counter()
        rollout.advance(out.actions)
        t3 = time.perf_counter()
        self.frames += 1
        self.frame_ms = {"infer": 1000 * (t1 - t0), "draw": 1000 * (t2 - t1), "env": 1000 * (t3 - t2)}
        for name, ms in self.frame_ms.items():
            self._ms[name] += 0.1 * (ms - self._ms[name])  # smoothed for the HUD
        self._update_title()

    def _present(self) -> None:
        """Blit the frame (or the help composite) into the window's back buffer, letterboxed."""
        frame = self.renderer.frame_target
        if self.help_visible:
            frame = self.overlay.render(frame, self.current, self.speed, self._status())
        size = self.window.framebuffer_size
        self.present.render(frame, self.ctx.screen, size, letterbox(*size) if min(size) > 0 else None)

    def _show(self) -> None:
        self._present()
        self.window.swap()
        self._dirty = False

    def frame_rgb(self) -> np.ndarray:
        """The frame last drawn, as the video has it: (540, 960, 3) uint8 RGB, rows top-down."""
        return self.renderer.read_rgb(1)[0]

    def window_rgb(self) -> np.ndarray:
        """What the window shows (without swapping): (fb_h, fb_w, 3) uint8 RGB, rows top-down."""
        self._present()
        fb_w, fb_h = self.window.framebuffer_size
        data = self.ctx.screen.read(viewport=(0, 0, fb_w, fb_h), components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(fb_h, fb_w, 3)[::-1]

    # -- the loop ------------------------------------------------------------------------------

    def tick(self) -> bool:
        """One pass of the loop: handle input, then (unless paused) wait for the deadline and draw
        a frame. -> whether a frame was drawn."""
        self.window.poll()
        if self.window.should_close:
            return False
        if self.paused:
            if self._step_requested:
                self._step_requested = False
                self.step()
                return True
            if self._dirty:
                self._show()
            self.window.wait(PAUSED_WAIT_S)
            return False
        if not self.uncapped:
            self.pacer.wait(self.period)
        self.step()
        return True

    def run(self, max_frames: int = 0) -> int:
        """Loop until the window closes (Esc, q, the close button) or ``max_frames`` frames are
        drawn (0: no limit). -> frames drawn."""
        drawn = 0
        while not self.window.should_close:
            drawn += self.tick()
            if max_frames and drawn >= max_frames:
                break
        return drawn

    # -- outputs -------------------------------------------------------------------------------

    def _output_path(self, kind: str, suffix: str) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = f"preview_{self.game.name}_{self.panel.milestone.slug}_{kind}_{stamp}_f{self.frames:06d}"
        path = self.output_dir / f"{base}{suffix}"
        n = 1
        while path.exists():
            path = self.output_dir / f"{base}_{n}{suffix}"
            n += 1
        return path

    def screenshot(self, path: str | Path | None = None) -> Path | None:
        """Save the frame shown (the video's frame, no overlay) as a PNG; None before the first frame."""
        if self.frames == 0:
            print("gpurender: no frame drawn yet; nothing to save")
            return None
        path = Path(path) if path is not None else self._output_path("shot", ".png")
        Image.fromarray(self.frame_rgb(), "RGB").save(path)
        print(f"gpurender: screenshot {path}")
        return path

    def toggle_recording(self) -> Path | None:
        """Start recording the frames shown, or stop and finish the MP4. -> the MP4 when stopped."""
        if self._encoder is None:
            codec, _ = choose_encoder(self.encoder)
            path = self._output_path("rec", ".mp4")
            settings = EncodeSettings(fps=self.cfg.fps, crf=self.cfg.crf, preset=self.cfg.preset)
            self._encoder = EncoderThread(VideoWriter(path, codec, settings))
            self.recording_path, self.recorded_frames = path, 0
            print(f"gpurender: recording to {path} (r again to stop)")
            return None
        return self.stop_recording()

    def stop_recording(self) -> Path | None:
        """Finish the MP4 being recorded, if any (renamed into place); -> its path."""
        encoder, self._encoder = self._encoder, None
        if encoder is None:
            return None
        encoder.finish()
        print(f"gpurender: recorded {self.recorded_frames} frames to {self.recording_path}")
        return self.recording_path

    # -- HUD -----------------------------------------------------------------------------------

    def _status(self) -> str:
        pace = "uncapped" if self.uncapped else f"{self.cfg.fps * self.speed:g} steps/s"
        parts = ["paused" if self.paused else pace]
        if self.recording:
            parts.append(f"REC {self.recorded_frames} frames")
        return f"frame {self.frames:,} | " + " | ".join(parts)

    def _update_title(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._title_at < TITLE_EVERY_S:
            return
        self._title_at = now
        p = self.panel
        target = "uncapped" if self.uncapped else f"/{self.cfg.fps * self.speed:g}"
        ms = self._ms
        title = (f"gpurender {self.game.name} | milestone {p.milestone.display} {p.agent.algo} "
                 f"({self.current + 1}/{len(self.panels)}) | {self.fps:.1f}{target} fps | "
                 f"infer {ms['infer']:.1f} ms | env {ms['env']:.1f} ms | draw {ms['draw']:.1f} ms | "
                 f"x{self.speed:g}")
        if self.paused:
            title += " | PAUSED"
        if self.recording:
            title += f" | REC {self.recorded_frames}"
        self.window.set_title(title + " | h: help")

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish a recording, release GL resources, close the window and the game. Idempotent."""
        try:
            self.stop_recording()
        finally:
            for gl in (self.overlay, self.present):
                if gl is not None:
                    gl.release()
            self.overlay = self.present = None
            for part in (self.renderer, self.rollout, self.window):
                if part is not None:
                    part.close()
            self.renderer = self.rollout = self.window = None

    def __enter__(self) -> Preview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_preview(cfg: RenderConfig, pcfg: PreviewConfig) -> int:
    """``gpurender preview``: open the window and run until it is closed (or ``pcfg.max_frames``)."""
    if pick_device(cfg.device).type == "cpu":
        # batch-1 inference gains little from more threads, and spinning torch threads steal the
        # cores llvmpipe and the emulator need
        torch.set_num_threads(1)
    with Preview(cfg, pcfg) as pv:
        print("gpurender preview: h shows the keys, Esc or q quits")
        pv.run(pcfg.max_frames)
    return 0
