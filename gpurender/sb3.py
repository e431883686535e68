"""Render milestone videos while a Stable-Baselines3 model trains: :class:`MilestoneVideoCallback`.

    from gpurender.sb3 import MilestoneVideoCallback

    model.learn(1_000_000, callback=MilestoneVideoCallback(render_options={"clip_seconds": 30}))

The callback saves a checkpoint at each milestone percentage of training, under a name gpurender
reads (``step_<N>_pct_<P>.zip``), and renders its video in the background while training goes
on. From rl-baselines3-zoo, name it in the hyperparameter file's ``callback:`` entry (rl-zoo
builds it from keyword arguments only; the total is then read from ``learn``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat

import gpurender
from gpurender.config import ConfigError, RenderConfig, flag
from gpurender.errors import GpurenderError
from gpurender.milestones import parse_checkpoint_name
from gpurender.outputs import partial_path

log = logging.getLogger(__name__)

DEFAULT_MILESTONES = (0.0, 25.0, 50.0, 75.0, 100.0)
SUPERSEDED = "superseded"
"""Subfolder of the save folder that an earlier schedule's checkpoint moves to when this one
saves the same percentage (so the folder never holds two checkpoints of one label)."""

_SET_BY_CALLBACK = ("model_dir", "milestones", "progress_video", "milestone_videos")
_NO_FLAG = ("algo", "max_tiles")
"""RenderConfig fields ``gpurender render`` has no flag for."""
_PROGRESS_ONLY = ("progress_layout",)
"""Render options for the progress command only."""
_MILESTONE_ONLY = ("workers", "ray_address", "trace")
"""Render options for the milestone renders only: the progress video draws in one pipeline and
writes no traces."""
_DEFAULT_RENDER = RenderConfig()
_STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}
"""Exit codes of a render stopped by Ctrl-C or SIGTERM (the CLI exits 128 + signal number)."""

# The render's interpreter: lower its priority (its simulation process and encoder threads
# inherit it), and have the kernel send it SIGTERM, which it handles like Ctrl-C, if the
# training process dies, however it dies. Then it is `python -m gpurender`.
_CHILD = """\
import os, sys
parent, nice = int(sys.argv[1]), int(sys.argv[2])
if nice:
    os.nice(nice)
if sys.platform.startswith("linux"):
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(143)
from gpurender.cli import main
sys.exit(main(sys.argv[3:]))
"""


@dataclass(frozen=True)
class SavedMilestone:
    """A checkpoint the callback saved."""

    pct: float
    """Percent of the run's total timesteps."""
    steps: int
    """``num_timesteps`` when it was saved."""
    path: Path
    seconds: float
    """How long the save held training up."""


@dataclass(frozen=True)
class RenderResult:
    """One background ``gpurender`` command and how it ended."""

    milestone: SavedMilestone | None
    """The milestone rendered; None for the progress video."""
    command: tuple[str, ...]
    """The ``gpurender ...`` arguments it ran with."""
    returncode: int | None
    """Its exit code (negative: killed by that signal); None if it never started."""
    seconds: float
    error: str | None = None
    """One line saying why it failed, was stopped or never ran; None when it succeeded."""
    log: Path | None = None
    """Its full output, kept beside the checkpoint when it failed."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Job:
    milestone: SavedMilestone | None
    args: list[str]
    """``gpurender`` arguments."""
    finish: str
    """The command that does this job later, for messages."""


class MilestoneVideoCallback(BaseCallback):
    """Save a checkpoint at each milestone percentage of training and render its video in the
    background while training goes on.

    **Saves.** Milestone ``P`` is due when ``num_timesteps`` reaches ``P`` % of the run's total
    timesteps. 0 % is saved when training starts; 100 % (any milestone due at the end of this
    ``learn``) when ``learn`` ends having reached it, once, from the final weights after the last
    update, even when the last rollout's steps land exactly on the total; every other one at the
    first step that reaches it (milestones one step reaches share one save). A save is written to a
    hidden partial name in the save folder, then renamed to ``step_<N>_pct_<P>.zip``: a concurrent
    ``gpurender render`` never reads half a zip. Checkpoints are complete SB3 saves (``PPO.load``
    resumes training from them). A save is all the time training waits: ``on_step`` is one
    comparison otherwise, and renders run in other processes. A failed save (a full disk) is logged
    and training goes on.

    **Total timesteps.** ``total_timesteps`` if given, else the total of ``learn`` (read from its
    locals when training starts), which is what rl-baselines3-zoo's ``callback:`` entry gets.
    With ``learn(..., reset_num_timesteps=False)`` SB3's total counts the steps already done, so
    percentages are of the whole run so far; milestones already passed when ``learn`` starts
    (0 % included) are not saved again. For one schedule across several ``learn`` calls, give
    the whole run's ``total_timesteps`` here: each call saves the milestones it crosses, and the
    call that reaches the total saves 100 %. When a call saves a percentage that a checkpoint of
    an earlier schedule in the save folder already has (e.g. ``pct_100`` of a shorter run), that
    checkpoint is moved to ``superseded/`` (logged), so ``gpurender render`` on the folder never
    meets two checkpoints with one label.

    **Folders.** ``save_dir``: else ``<logger folder>/milestones`` when the model's SB3 logger
    writes files (``tensorboard_log``, or a logger set with ``set_logger`` that writes csv, log
    or tensorboard files), else ``./milestones``. ``video_dir``: else ``videos/`` beside the save
    folder when that is called ``milestones`` (``RUN/milestones`` -> ``RUN/videos``), else
    ``<save_dir>/videos``.

    **Renders.** Each saved milestone is queued and rendered by ``python -m gpurender render
    --model-dir <checkpoint> --output-dir <video_dir>`` in a subprocess, ``workers`` at a time, in
    the order saved. A subprocess rather than a spawned Python-API process: it is exactly the
    command a user runs (one-line errors, exit codes, Ctrl-C/SIGTERM clean-up, the per-milestone
    locks that let a manual render share the folder), it starts a fresh interpreter (no torch or
    CUDA state inherited from training, the training script's ``__main__`` is never re-imported),
    and a crash in it (a driver segfault, the OOM killer) cannot take training down. It runs at
    lower priority (``nice``, 10 by default; its simulation process and encoder threads inherit it),
    so training keeps the cores, and with inference on the CPU unless ``render_options`` names
    another device (training owns the GPU; drawing and NVENC still use it where there is one). The
    kernel sends it SIGTERM if the training process dies (Linux), which it handles like Ctrl-C.

    ``render_options``: any :class:`~gpurender.config.RenderConfig` field ``gpurender render``
    has a flag for (``clip_seconds``, ``fps``, ``envs_per_milestone``, ``seed``, ``device``,
    ``encoder``, ``crf``, ``preset``, ``backend``, ``stochastic``, ``trace``, ``stack_forwards``,
    ``workers`` — pipelines per render, not renders at once —, ``ray_address``, ``force``, and
    ``game``, by default the training env's game), as a dict or a RenderConfig (its non-default
    fields); ``output_dir`` is ``video_dir``. They are checked here, so a bad value fails before
    training starts (:class:`~gpurender.errors.GpurenderError`).

    **Failures.** A render that fails never stops training: the one-line reason is logged
    (``logging`` warning, and counted in SB3's logger as ``gpurender/render_failures``), its full
    output kept as ``<checkpoint>.render.log``, the checkpoint stays, and the message gives the
    ``gpurender render`` command that finishes it later (:meth:`finish_command`). Results are in
    :attr:`results`; :attr:`failures` lists the failed ones.

    **End of training.** With ``wait`` (default) ``learn`` returns once the queue is rendered;
    without it renders go on in the background (:meth:`wait` waits for them later; at
    interpreter exit those still running are stopped, their partial files removed, and
    :meth:`finish_command` finishes them). ``progress_video`` then runs ``python -m gpurender
    progress --model-dir <save_dir> --output-dir <video_dir> [progress_args...]``; where this
    gpurender has no ``progress`` command it is skipped with a warning.

    **Ctrl-C.** A Ctrl-C at the terminal reaches the render too (same process group): it removes
    its unfinished files and exits, the queue is dropped and nothing waits for it; the saved
    checkpoints stay for :meth:`finish_command`. rl-zoo, which catches the interrupt and calls
    ``on_training_end`` itself, does not wait either.

    ``render=False`` only saves the milestones.
    """

    def __init__(
        self,
        total_timesteps: int | None = None,
        milestones: Sequence[float] = DEFAULT_MILESTONES,
        save_dir: str | os.PathLike[str] | None = None,
        video_dir: str | os.PathLike[str] | None = None,
        render_options: Mapping[str, Any] | RenderConfig | None = None,
        workers: int = 1,
        nice: int = 10,
        wait: bool = True,
        render: bool = True,
        progress_video: bool = False,
        progress_args: Sequence[str] = (),
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if total_timesteps is not None and _steps(total_timesteps) is None:
            raise GpurenderError(f"total_timesteps must be a whole number >= 1, got {total_timesteps!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise GpurenderError(f"workers must be a whole number >= 1, got {workers!r}")
        if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
            raise GpurenderError(f"nice must be a whole number in 0..19, got {nice!r}")
        self.total_timesteps = None if total_timesteps is None else _steps(total_timesteps)
        self.milestones = _check_milestones(milestones)
        self.save_dir_arg = None if save_dir is None else Path(save_dir)
        self.video_dir_arg = None if video_dir is None else Path(video_dir)
        self.render_options, out_dir = _check_options(render_options)
        if out_dir is not None:
            if self.video_dir_arg is not None and Path(out_dir) != self.video_dir_arg:
                raise GpurenderError(f"render_options output_dir {out_dir} and video_dir {video_dir} disagree; "
                                     "give one of them")
            self.video_dir_arg = Path(out_dir)
        self.workers, self.nice, self.wait_at_end, self.render = workers, nice, wait, render
        self.progress_video, self.progress_args = progress_video, tuple(str(a) for a in progress_args)

        self.save_dir: Path | None = None
        """The folder checkpoints go to, once training has started."""
        self.video_dir: Path | None = None
        self.saved: list[SavedMilestone] = []
        self.results: list[RenderResult] = []
        """Every background command that ended, in the order they ended."""
        self._total = 0
        self._learn_end = 0
        self._pending: list[float] = []  # this learn's milestones still to save, ascending
        self._next_due = math.inf
        self._ended = True
        self._jobs: list[_Job] = []
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._busy = 0  # jobs queued or running
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._interrupted = False
        self._closed = False
        self._progress_thread: threading.Thread | None = None

    # -- SB3 hooks -------------------------------------------------------------------------------

    def _on_training_start(self) -> None:
        # learn's own total: SB3 has added the steps already done when not resetting them
        learn_total = _steps(self.locals.get("total_timesteps", getattr(self.model, "_total_timesteps", None)))
        total = self.total_timesteps or learn_total
        if total is None:
            raise GpurenderError("MilestoneVideoCallback: cannot tell the run's total timesteps; pass total_timesteps")
        self._total = total
        self._learn_end = learn_total or total
        self._interrupted = False
        self.save_dir = self._resolve_save_dir()
        self.video_dir = self._resolve_video_dir(self.save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if "game" not in self.render_options:
            self.render_options["game"] = self._training_game()
        start = self.model.num_timesteps
        self._pending = [p for p in self.milestones if self._due(p) > start or (start == 0 and p == 0)]
        passed = [p for p in self.milestones if p not in self._pending]
        self._ended = False
        self._info(f"milestones {_pcts(self.milestones)} of {total:,} steps -> {self.save_dir}"
                   + (f"; videos -> {self.video_dir}" if self.render else "")
                   + (f"; continuing at step {start:,}: {_pcts(passed)} already passed" if passed else ""))
        if self._pending and self._pending[0] == 0:
            self._save([self._pending.pop(0)])
        self._update_next_due()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_due:
            self._save([p for p in self._pending if not self._at_end(p) and self._due(p) <= self.num_timesteps])
            self._update_next_due()
        return True

    def _on_rollout_end(self) -> None:
        # the main thread records into SB3's logger (it is not thread-safe); it prints at dump_logs
        self.logger.record("gpurender/milestones_saved", len(self.saved))
        if self.render:
            self.logger.record("gpurender/videos_rendered", sum(r.ok and r.milestone is not None for r in self.results))
            self.logger.record("gpurender/render_failures",
                               sum(not r.ok and r.milestone is not None for r in self.results))

    def _on_training_end(self) -> None:
        if self._ended:  # rl-zoo calls it a second time after learn (and after a Ctrl-C)
            return
        self._ended = True
        now = self.model.num_timesteps
        due = [p for p in self._pending if self._due(p) <= now]
        if due:
            self._save(due)
        if self._pending:
            self._info(f"training ended at step {now:,} of {self._total:,}: milestones {_pcts(self._pending)} "
                       "not reached, not saved")
            self._pending = []
        self._next_due = math.inf
        if self.wait_at_end and not self._interrupted:
            self.wait()
            if self.progress_video and not self._interrupted:
                self._progress()
        elif self.progress_video and not self._interrupted:
            self._progress_thread = threading.Thread(target=self._progress_after_queue, daemon=True,
                                                     name="gpurender-progress")
            self._progress_thread.start()

    # -- public ----------------------------------------------------------------------------------

    @property
    def failures(self) -> list[RenderResult]:
        """The background commands that failed, were stopped or never ran."""
        return [r for r in self.results if not r.ok]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued render has ended (or ``timeout`` seconds); -> True if none is
        left. Ctrl-C interrupts it."""
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout)

    def finish_command(self) -> str:
        """The ``gpurender render`` command that renders whatever milestones of this run have no
        video yet (same settings, so videos already made are kept)."""
        save_dir = self.save_dir or self._resolve_save_dir()
        video_dir = self.video_dir or self._resolve_video_dir(save_dir)
        return shlex.join(["gpurender", "render", "--model-dir", str(save_dir), "--output-dir", str(video_dir),
                           *_flags(self.render_options, skip=_PROGRESS_ONLY)])

    def close(self, timeout: float = 30.0, grace: float = 0.0) -> None:
        """Drop the queue, stop running renders (SIGTERM: they remove their unfinished files) and
        their threads. Milestones left unrendered stay for :meth:`finish_command`. ``grace``:
        seconds to let renders end by themselves first (after a Ctrl-C that reached them too: a
        SIGTERM in the middle of their clean-up would cut it short)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            dropped, self._jobs = self._jobs, []
            self._busy -= len(dropped)
            running = list(self._running.values())
            self._cond.notify_all()
        for job in dropped:
            self._record(job, None, 0.0, "not rendered: the callback was closed")
        deadline = time.monotonic() + grace
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        running = [proc for proc in running if proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        with self._cond:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))

    # -- saving ----------------------------------------------------------------------------------

    def _due(self, pct: float) -> float:
        return pct / 100.0 * self._total

    def _at_end(self, pct: float) -> bool:
        """Whether milestone ``pct`` falls due when this ``learn`` ends (it is saved then, from
        the weights after the last update, not at the step that crosses it)."""
        return self._due(pct) >= self._learn_end

    def _update_next_due(self) -> None:
        below = [self._due(p) for p in self._pending if not self._at_end(p)]
        self._next_due = min(below) if below else math.inf

    def _save(self, pcts: list[float]) -> None:
        """Save the model once as each milestone of ``pcts`` (partial name, then rename) and queue
        their renders."""
        if not pcts:
            return
        assert self.save_dir is not None
        self._pending = [p for p in self._pending if p not in pcts]
        steps = self.model.num_timesteps
        t0 = time.perf_counter()
        paths = [self.save_dir / f"step_{steps}_pct_{p:g}.zip" for p in pcts]
        partials = [partial_path(p) for p in paths]
        try:
            with open(partials[0], "wb") as f:
                self.model.save(f)
            for src in partials[1:]:
                shutil.copyfile(partials[0], src)
            for pct, src, dst in zip(pcts, partials, paths, strict=True):
                self._supersede(pct, dst)
                os.replace(src, dst)
        except BaseException as exc:
            for p in partials:
                p.unlink(missing_ok=True)
            if not isinstance(exc, OSError):
                raise
            log.warning("MilestoneVideoCallback: could not save milestone %s at step %d: %s; training goes on",
                        _pcts(pcts), steps, exc)
            return
        seconds = time.perf_counter() - t0
        for pct, path in zip(pcts, paths, strict=True):
            saved = SavedMilestone(pct, steps, path, seconds / len(pcts))
            self.saved.append(saved)
            self._info(f"milestone {pct:g}% saved at step {steps:,} -> {path} ({seconds:.2f} s)")
            if self.render:
                self._submit(saved)

    def _supersede(self, pct: float, path: Path) -> None:
        for other in sorted(path.parent.glob("*.zip")):
            m = parse_checkpoint_name(other)
            if other != path and m is not None and m.pct == pct:
                dest = other.parent / SUPERSEDED / other.name
                dest.parent.mkdir(exist_ok=True)
                os.replace(other, dest)
                log.warning("MilestoneVideoCallback: %s has the label %g%% of an earlier schedule; moved to %s",
                            other.name, pct, dest)

    # -- folders, game ---------------------------------------------------------------------------

    def _resolve_save_dir(self) -> Path:
        if self.save_dir_arg is not None:
            return self.save_dir_arg.absolute()
        folder = self._logger_folder()
        return (Path(folder) / "milestones" if folder else Path("milestones")).absolute()

    def _logger_folder(self) -> str | None:
        """The folder the model's SB3 logger writes files to; None if it writes none (SB3 then
        still names a temporary folder, which is no place for a run's checkpoints)."""
        model = getattr(self, "model", None)
        if model is None:
            return None
        logger = model.logger
        writes_files = any(not (isinstance(f, HumanOutputFormat) and not f.own_file) for f in logger.output_formats)
        return logger.get_dir() if writes_files else None

    def _resolve_video_dir(self, save_dir: Path) -> Path:
        if self.video_dir_arg is not None:
            return self.video_dir_arg.absolute()
        return save_dir.parent / "videos" if save_dir.name == "milestones" else save_dir / "videos"

    def _training_game(self) -> str:
        """The game of the training env (its gymnasium id), else RenderConfig's default."""
        from gpurender.games import resolve_game

        try:
            spec = self.training_env.get_attr("spec", [0])[0]
            return resolve_game(spec.id).name
        except Exception as exc:  # an env without a spec (EnvPool), not an Atari id, a VecEnv without get_attr
            log.warning("MilestoneVideoCallback: cannot tell the training env's Atari game (%s); rendering %s: "
                        "pass render_options={'game': ...}", exc, _DEFAULT_RENDER.game)
            return _DEFAULT_RENDER.game

    # -- the queue -------------------------------------------------------------------------------

    def _submit(self, saved: SavedMilestone) -> None:
        assert self.video_dir is not None
        args = ["render", "--model-dir", str(saved.path), "--output-dir", str(self.video_dir), "--quiet",
                *_flags(self.render_options, skip=_PROGRESS_ONLY)]
        job = _Job(saved, args, self.finish_command())
        with self._cond:
            if self._closed or self._interrupted:
                why = "the callback was closed" if self._closed else "rendering was interrupted"
                self._record(job, None, 0.0, f"not rendered: {why}")
                return
            self._jobs.append(job)
            self._busy += 1
            if len(self._threads) < self.workers:
                t = threading.Thread(target=self._work, daemon=True, name="gpurender-render")
                self._threads.append(t)
                t.start()
                _OPEN.add(self)

    def _work(self) -> None:
        # A thread per concurrent render, ending when the queue is empty: a render's
        # PR_SET_PDEATHSIG fires when the thread that started it ends, and no idle thread keeps
        # the callback (and its model) alive.
        while True:
            with self._cond:
                if not self._jobs or self._closed:
                    self._threads.remove(threading.current_thread())
                    return
                job = self._jobs.pop(0)
            try:
                self._run(job)
            except Exception as exc:  # never let a render's trouble reach training
                log.exception("MilestoneVideoCallback: rendering %s failed", _what(job))
                self._record(job, None, 0.0, f"{type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _run(self, job: _Job) -> None:
        returncode, seconds, output = self._command(job.args)
        what = _what(job)
        if returncode == 0:
            self._record(job, 0, seconds, None)
            busy = "is rendering it)" in output  # the summary's "skipped (process N is rendering it)"
            self._info(f"{what}: another process is rendering it" if busy
                       else f"{what} rendered ({seconds:.1f} s) -> {self.video_dir}")
            return
        if returncode in _STOPPED:
            with self._cond:
                self._interrupted = True
                dropped, self._jobs = self._jobs, []
                self._busy -= len(dropped)
            self._record(job, returncode, seconds, "stopped (Ctrl-C or SIGTERM); unfinished files were removed")
            for other in dropped:
                self._record(other, None, 0.0, "not rendered: rendering was interrupted")
            names = ", ".join(_what(j) for j in [job, *dropped])
            log.warning("MilestoneVideoCallback: rendering stopped (%s); the checkpoints stay: finish later with "
                        "`%s`", names, job.finish)
            return
        error = _one_line(output, returncode)
        log_path = None
        if job.milestone is not None:
            log_path = job.milestone.path.with_suffix(".render.log")
            with contextlib.suppress(OSError):
                log_path.write_text(output)
        self._record(job, returncode, seconds, error, log_path)
        log.warning("MilestoneVideoCallback: %s failed: %s%s; training goes on, the checkpoint stays: finish later "
                    "with `%s`", what, error, f" (full output: {log_path})" if log_path else "", job.finish)

    def _command(self, args: list[str]) -> tuple[int, float, str]:
        """Run ``python -m gpurender ARGS`` niced, its output in a temporary file; -> (exit code,
        seconds, output)."""
        argv = [sys.executable, "-c", _CHILD, str(os.getpid()), str(self.nice), *args]
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=_child_env())
            with self._cond:
                self._running[proc.pid] = proc
            try:
                returncode = proc.wait()
            finally:
                with self._cond:
                    self._running.pop(proc.pid, None)
            out.seek(0)
            output = out.read().decode(errors="replace")
        return returncode, time.perf_counter() - t0, output

    def _record(self, job: _Job, returncode: int | None, seconds: float, error: str | None,
                log_path: Path | None = None) -> None:
        self.results.append(RenderResult(job.milestone, tuple(job.args), returncode, seconds, error, log_path))

    # -- the progress video ----------------------------------------------------------------------

    def _progress_after_queue(self) -> None:
        self.wait()
        if not self._interrupted and not self._closed:
            self._progress()

    def _progress(self) -> None:
        assert self.save_dir is not None and self.video_dir is not None
        args = ["progress", "--model-dir", str(self.save_dir), "--output-dir", str(self.video_dir), "--quiet",
                *_flags(self.render_options, skip=_MILESTONE_ONLY), *self.progress_args]
        job = _Job(None, args, shlex.join(["gpurender", *args]))
        returncode, seconds, output = self._command(args)
        if returncode == 0:
            self._record(job, 0, seconds, None)
            self._info(f"progress video written ({seconds:.1f} s) -> {self.video_dir}")
        elif "invalid choice: 'progress'" in output:
            self._record(job, returncode, seconds, "this gpurender has no `progress` command")
            log.warning("MilestoneVideoCallback: no progress video: this gpurender has no `progress` command")
        else:
            error = _one_line(output, returncode)
            self._record(job, returncode, seconds, error)
            log.warning("MilestoneVideoCallback: the progress video failed: %s; make it later with `%s`", error,
                        job.finish)

    def _info(self, message: str) -> None:
        log.info("MilestoneVideoCallback: %s", message)
        if self.verbose >= 1:
            print(f"MilestoneVideoCallback: {message}", flush=True)


# -- helpers ---------------------------------------------------------------------------------------


def _steps(value: object) -> int | None:
    """``value`` as a whole number of steps >= 1 (``1e6`` counts), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _check_milestones(milestones: Sequence[float]) -> tuple[float, ...]:
    if isinstance(milestones, str):
        milestones = [m for m in milestones.split(",") if m.strip()]
    try:
        pcts = sorted({float(m) for m in milestones})
    except (TypeError, ValueError):
        raise GpurenderError(f"milestones must be percentages, e.g. [0, 25, 50, 75, 100]; got {milestones!r}") from None
    for p in pcts:
        parsed = parse_checkpoint_name(Path(f"step_0_pct_{p:g}.zip"))
        if not 0 <= p <= 100 or parsed is None or parsed.pct != p:
            raise GpurenderError(f"milestone {p!r}: must be a percentage in 0..100 with few digits (like 12.5)")
    if not pcts:
        raise GpurenderError("milestones: give at least one percentage")
    return tuple(pcts)


def _check_options(options: Mapping[str, Any] | RenderConfig | None) -> tuple[dict[str, Any], Any]:
    """-> (the render options, checked, with the device defaulting to cpu; the output_dir given)."""
    if options is None:
        given: dict[str, Any] = {}
    elif isinstance(options, RenderConfig):
        given = {f.name: getattr(options, f.name) for f in fields(RenderConfig)
                 if getattr(options, f.name) != getattr(_DEFAULT_RENDER, f.name)}
    else:
        given = dict(options)
    for name in given:
        if name in _SET_BY_CALLBACK:
            raise GpurenderError(f"render_options {name}: set by the callback (it renders the checkpoints it saves, "
                                 "and writes the progress video with progress_video=True); leave it out")
        if name in _NO_FLAG:
            raise GpurenderError(f"render_options {name}: `gpurender render` has no flag for it")
    try:
        checked = RenderConfig(**given)
    except ConfigError as exc:
        raise GpurenderError(f"render_options {exc.field} {exc.requirement}, got {exc.value!r}") from None
    except TypeError:
        known = ", ".join(f.name for f in fields(RenderConfig) if f.name not in (*_SET_BY_CALLBACK, *_NO_FLAG))
        unknown = ", ".join(sorted(set(given) - {f.name for f in fields(RenderConfig)}))
        raise GpurenderError(f"render_options: unknown {unknown} (known: {known})") from None
    out_dir = given.pop("output_dir", None)
    opts = {"device": "cpu", **{name: getattr(checked, name) for name in given}}
    return opts, out_dir


def _flags(options: Mapping[str, Any], skip: Sequence[str] = ()) -> list[str]:
    """``gpurender render`` flags for RenderConfig fields (but those named in ``skip``)."""
    out: list[str] = []
    for name, value in options.items():
        if value is None or name in skip:
            continue
        if name == "stack_forwards":
            out += ["--stack-forwards", "on" if value else "off"]
        elif name == "ray_address":
            out += ["--ray", value] if value else ["--ray"]
        elif isinstance(value, bool):
            out += [flag(name)] if value else []
        else:
            out += [flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
    return out


def _child_env() -> dict[str, str]:
    """The environment of a render: this one, with this gpurender importable when it runs from a
    source checkout that is not installed."""
    env = dict(os.environ)
    root = str(Path(gpurender.__file__).resolve().parents[1])
    if Path(root).name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    return env


def _one_line(output: str, returncode: int) -> str:
    """Why a gpurender command failed, in one line: its ``gpurender: error/failed:`` lines, else
    the last line of its output (a traceback's exception), else its exit status."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    prefixes = ("gpurender: error: ", "gpurender: failed: ")
    said = [line.removeprefix(p) for line in lines for p in prefixes if line.startswith(p)]
    if said:
        return "; ".join(said)
    if returncode < 0:
        return f"the render process died (killed by {signal.Signals(-returncode).name})"
    return lines[-1] if lines else f"exit code {returncode}"


def _what(job: _Job) -> str:
    m = job.milestone
    return "the progress video" if m is None else f"the {m.pct:g}% milestone (step {m.steps:,})"


def _pcts(pcts: Sequence[float]) -> str:
    return ", ".join(f"{p:g}%" for p in pcts) or "none"


_OPEN: weakref.WeakSet[MilestoneVideoCallback] = weakref.WeakSet()


def _close_all() -> None:
    """At interpreter exit: stop what is still rendering and say how to finish it."""
    # an uncaught Ctrl-C: the renders got it too (one process group) and are cleaning up
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    why = "interrupted: the renders stop" if interrupted else "exiting while renders run: they are stopped"
    for cb in list(_OPEN):
        if cb._busy and not cb._closed:
            log.warning("MilestoneVideoCallback: %s; finish the milestones later with `%s`", why, cb.finish_command())
        cb.close(timeout=10.0, grace=5.0 if interrupted else 0.0)


atexit.register(_close_all)


__all__ = ["DEFAULT_MILESTONES", "MilestoneVideoCallback", "RenderResult", "SavedMilestone"]
