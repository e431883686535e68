"""A job's shards as tasks on a Ray cluster (``--ray [ADDRESS]``, ``pip install 'gpurender[ray]'``).

No shared filesystem is assumed: the driver puts each checkpoint in the object store once, a
task writes its checkpoints and videos in a temporary folder of its node and returns the
finished files' bytes with its report, and the driver writes them into the output folder
(partial, then renamed) with their sidecars. A task whose worker dies is retried by Ray; a task
that fails has its milestones reported as failures while the others finish. Ctrl-C cancels the
tasks still running; the driver has written only finished files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurender.config import RenderConfig
from gpurender.errors import GpurenderError
from gpurender.outputs import write_atomic
from gpurender.shards import CORES_PER_PIPELINE, Shard, job_title, plan_shards
from gpurender.trace import saliency_path

if TYPE_CHECKING:
    from gpurender.games import Game
    from gpurender.milestones import Milestone
    from gpurender.pipeline import RenderCallback, RenderReport, _Digests

log = logging.getLogger(__name__)

TASK_RETRIES = 3
"""Times Ray runs a task again after its worker process or node died."""


def import_ray() -> Any:
    """The ``ray`` module (a one-line error if it is not installed), with usage statistics off
    unless the environment turns them on."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise GpurenderError("--ray needs Ray: pip install 'gpurender[ray]'") from None
    return ray


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (``""``/None: Ray's default, ``RAY_ADDRESS`` or a new local
    cluster) unless this process already has; -> whether this call connected (and so should
    disconnect). A cluster started here has no dashboard."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address or None, "log_to_driver": False, "logging_level": logging.WARNING,
                              "configure_logging": False}
    if not (address or os.environ.get("RAY_ADDRESS")):
        kwargs["include_dashboard"] = False  # only a cluster started here takes it
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "local"
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                " (a cluster with token authentication, on by default in ray 2.60, also needs RAY_AUTH_MODE=token "
                "and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise GpurenderError(f"cannot reach the Ray cluster at {where}: {why}{hint}") from None
    return True


def task_resources(resources: dict[str, float], nodes: list[dict], shards: int, device: str) -> dict[str, float]:
    """What each task asks for: :data:`~gpurender.shards.CORES_PER_PIPELINE` CPUs (no more than the
    largest node has), and where the cluster has GPUs and ``device`` may use one, a GPU or the
    share of one that lets every shard run at once."""
    node_cpus = max((n.get("Resources", {}).get("CPU", 0.0) for n in nodes if n.get("Alive")), default=1.0)
    out = {"num_cpus": float(max(1.0, min(CORES_PER_PIPELINE, node_cpus)))}
    gpus = resources.get("GPU", 0.0)
    if gpus > 0 and device != "cpu":
        out["num_gpus"] = 1.0 if shards <= gpus else max(0.01, round(gpus / shards, 2))
    return out


class _Progress:
    """A Ray actor: frames drawn by each shard's current attempt (a retry starts again at 0)."""

    def __init__(self) -> None:
        self.frames: dict[int, int] = {}
        self.pids: dict[int, int] = {}

    def started(self, shard: int, pid: int) -> None:
        self.frames[shard], self.pids[shard] = 0, pid

    def add(self, shard: int, frames: int) -> None:
        self.frames[shard] = self.frames.get(shard, 0) + frames

    def state(self) -> tuple[dict[int, int], dict[int, int]]:
        return dict(self.frames), dict(self.pids)


class _ActorProgress:
    """A task's :class:`~gpurender.pipeline.RenderCallback`: frame counts to the :class:`_Progress`
    actor, at most twice a second."""

    def __init__(self, actor: Any, shard: int) -> None:
        self.actor, self.shard, self.pending, self.sent = actor, shard, 0, time.monotonic()

    def on_start(self, total_frames: int, title: str) -> None:
        pass

    def on_frames(self, frames: int) -> None:
        self.pending += frames
        if time.monotonic() - self.sent > 0.5:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.actor.add.remote(self.shard, self.pending)
            self.pending, self.sent = 0, time.monotonic()

    def on_end(self, report: RenderReport) -> None:
        self.flush()


TASK_FOLDER = "gpurender-task-"
"""Prefix of a task's temporary folder, followed by its worker's process id."""


def _remove_dead_tasks_folders() -> None:
    """Delete the temporary folders of tasks whose worker was killed (it could not)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TASK_FOLDER}*-*"):
        try:
            pid = int(folder.name[len(TASK_FOLDER) :].split("-")[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue  # another user's live process


def _render_task(cfg: RenderConfig, game_name: str, shard: Shard, progress: Any,
                 *checkpoints: bytes) -> tuple[RenderReport, dict[str, bytes]]:
    """One shard on a Ray worker, in a temporary folder of its node: -> its report and the bytes
    of every finished video, trace and saliency maps file, by file name."""
    from gpurender.encode import configure_opencv_threads
    from gpurender.games import resolve_game
    from gpurender.pipeline import render_shard

    progress.started.remote(shard.index, os.getpid())
    _remove_dead_tasks_folders()
    work = Path(tempfile.mkdtemp(prefix=f"{TASK_FOLDER}{os.getpid()}-"))
    try:
        (work / "checkpoints").mkdir()
        local = []
        for i, (m, data) in enumerate(zip(shard.milestones, checkpoints, strict=True)):
            path = work / "checkpoints" / _task_name(i, m)
            path.write_bytes(data)
            local.append(replace(m, path=path))
        task_cfg = replace(cfg, model_dir=(work / "checkpoints",), output_dir=work / "out", workers=1,
                           ray_address=None, force=True)
        (work / "out").mkdir()
        configure_opencv_threads()
        callback = _ActorProgress(progress, shard.index)
        report = render_shard(task_cfg, resolve_game(game_name), shard._replace(milestones=tuple(local)),
                              [callback], sidecars=False)
        callback.flush()
        files = {}
        for v in report.videos:
            files[v.path.name] = v.path.read_bytes()
            if v.trace is not None:
                files[v.trace.name] = v.trace.read_bytes()
                maps = saliency_path(v.path)
                if maps.exists():
                    files[maps.name] = maps.read_bytes()
        return report, files
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _task_name(i: int, m: Milestone) -> str:
    """Milestone ``i`` of a shard's checkpoint file name in its task's folder (two runs' files may
    share a name)."""
    return f"{i}-{m.path.name}"


def render_on_ray(cfg: RenderConfig, game: Game, todo: Sequence[Milestone], callbacks: Sequence[RenderCallback],
                  digests: _Digests) -> RenderReport:
    """Render ``todo`` as Ray tasks (``cfg.workers`` of them; ``auto``: one per
    :data:`~gpurender.shards.CORES_PER_PIPELINE` CPUs or GPU of the cluster) and write their
    videos, traces (and their saliency maps) and sidecars into ``cfg.output_dir``; -> the merged
    report."""
    ray = import_ray()
    owned = connect(cfg.ray_address)
    try:
        resources = ray.cluster_resources()
        videos = len(todo) * cfg.envs_per_milestone
        if cfg.workers == "auto":
            n = max(1, int(resources.get("CPU", 1) // CORES_PER_PIPELINE), int(resources.get("GPU", 0)))
        else:
            n = int(cfg.workers)
        shards = plan_shards(list(todo), cfg.envs_per_milestone, min(n, videos))
        options = task_resources(resources, ray.nodes(), len(shards), cfg.device)
        log.info("Ray: %d task(s), each %s, on a cluster of %s", len(shards), options, resources)
        return _run(ray, cfg, game, shards, options, callbacks, digests)
    finally:
        if owned:
            ray.shutdown()


def _run(ray: Any, cfg: RenderConfig, game: Game, shards: list[Shard], options: dict[str, float],
         callbacks: Sequence[RenderCallback], digests: _Digests) -> RenderReport:
    from gpurender.pipeline import RenderReport, _merge

    report = RenderReport([], [])
    for cb in callbacks:
        cb.on_start(sum(s.videos for s in shards) * cfg.frames, job_title(game, shards, "Ray tasks"))
    progress = ray.remote(num_cpus=0)(_Progress).remote()
    task = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False, **options)(_render_task)
    stored = {m.path: ray.put(m.path.read_bytes()) for s in shards for m in s.milestones}
    refs = {task.options(name=f"gpurender shard {s.index}").remote(cfg, game.name, s, progress,
                                                                     *(stored[m.path] for m in s.milestones)): s
            for s in shards}
    shown = dict.fromkeys(range(len(shards)), 0)  # frames shown per shard: never goes back on a retry
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            _show_progress(ray, progress, shown, callbacks)
            for ref in ready:
                _merge(report, _collect(ray, ref, refs[ref], cfg, game, digests))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    _show_progress(ray, progress, shown, callbacks)
    return report


def _show_progress(ray: Any, progress: Any, shown: dict[int, int], callbacks: Sequence[RenderCallback]) -> None:
    frames, _ = ray.get(progress.state.remote())
    for shard, n in frames.items():
        if n > shown[shard]:
            for cb in callbacks:
                cb.on_frames(n - shown[shard])
            shown[shard] = n


def _collect(ray: Any, ref: Any, shard: Shard, cfg: RenderConfig, game: Game, digests: _Digests) -> RenderReport:
    """A finished task's videos written into the output folder with their sidecars; -> its report,
    with the driver's milestones and paths. A failed task -> its milestones as failures."""
    from gpurender.pipeline import RenderReport, write_sidecars

    try:
        report, files = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
        reason = str(cause) if isinstance(cause, GpurenderError) else f"{type(cause).__name__}: {cause}"
        return RenderReport([], [(m.path, f"Ray task {shard.index} failed: {reason.splitlines()[0]}")
                                 for m in shard.milestones])
    except ray.exceptions.RayError as exc:  # the worker or node died more often than it was retried
        return RenderReport([], [(m.path, f"Ray task {shard.index} was lost: {str(exc).splitlines()[0]}")
                                 for m in shard.milestones])
    output_dir = Path(cfg.output_dir)
    by_name = {_task_name(i, m): m for i, m in enumerate(shard.milestones)}
    report.failures = [(by_name[Path(p).name].path, msg) if Path(p).name in by_name else (p, msg)
                       for p, msg in report.failures]
    for v in report.videos:
        v.milestone = by_name[v.milestone.path.name]
        v.path = output_dir / v.path.name
        write_atomic(v.path, files[v.path.name])
        if v.trace is not None:
            v.trace = output_dir / v.trace.name
            write_atomic(v.trace, files[v.trace.name])
            maps = saliency_path(v.path)
            if maps.name in files:
                write_atomic(maps, files[maps.name])
    write_sidecars(cfg, game, report, digests)
    return report


__all__ = ["connect", "import_ray", "render_on_ray", "task_resources"]
