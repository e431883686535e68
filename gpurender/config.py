"""Typed configuration of a render job, checked when it is made; also reads the original tool's
``conf/config.yaml`` through the same checks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from gpurender.errors import GpurenderError

ENCODERS = ("auto", "nvenc", "x264")
BACKENDS = ("envpool", "gym")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
PROGRESS_LAYOUTS = ("grid", "sequence")
"""The progress video's layouts: the milestones side by side, or one after another."""
SALIENCY = ("off", "perturbation", "gradient")
"""``--saliency``: no maps, or the methods of :mod:`gpurender.saliency` (its ``METHODS``)."""
NETWORK_VIEWS = ("activations", "attribution")
"""``--network-view``: what the network diagram's nodes and edges show."""
CRF_RANGE = (0, 51)
"""libx264's CRF range (NVENC's CQ takes the same numbers)."""


class ConfigError(GpurenderError):
    """A config value out of range: ``--fps must be a positive whole number, got 0``.

    ``field`` and ``requirement`` let a reader name the value its own way (a YAML key, say)."""

    def __init__(self, field: str, requirement: str, value: object) -> None:
        self.field, self.requirement, self.value = field, requirement, value
        super().__init__(f"{flag(field)} {requirement}, got {value!r}")


_FLAGS = {"ray_address": "--ray", "progress_layout": "--layout"}


def flag(field: str) -> str:
    """The command-line flag of a config field: ``clip_seconds`` -> ``--clip-seconds``."""
    return _FLAGS.get(field) or "--" + field.replace("_", "-")


def _whole(field: str, value: object, requirement: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi`` (``30.0`` is 30; ``29.97``, ``True``, ``"30"`` are not whole numbers)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise ConfigError(field, requirement, value)
    return value


def _positive(field: str, value: object, requirement: str) -> float:
    """``value`` as a float, if it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ConfigError(field, requirement, value)
    return float(value)


def _one_of(field: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(choices)}", value)
    return value  # type: ignore[return-value]


def _paths(value: str | Path | Iterable[str | Path]) -> tuple[Path, ...]:
    if isinstance(value, str | Path):
        return (Path(value),)
    return tuple(Path(v) for v in value)


@dataclass(frozen=True)
class RenderConfig:
    """Everything ``gpurender render`` needs to know."""

    model_dir: tuple[Path, ...] = ()
    """Run folders, ``milestones/`` folders or checkpoint files."""
    output_dir: Path = Path("videos")
    """Where the MP4s and their JSON sidecars go."""
    game: str = "Breakout"
    """Atari game the agents were trained on (``Breakout``, ``BreakoutNoFrameskip-v4``, ...)."""
    clip_seconds: float = 90.0
    """Length of each video."""
    fps: int = 30
    """Video frame rate; one agent step per frame."""
    milestones: tuple[str, ...] | None = None
    """Only these milestone labels (``10,50,100``); all when None."""
    envs_per_milestone: int = 1
    """Independent games (different seeds) per milestone, one video each."""
    seed: int = 0
    """Env ``e`` of every milestone is seeded ``seed + e``: same seed, same video."""
    device: str = "auto"
    """Torch device for inference: auto (CUDA if present), cpu, cuda, cuda:1..."""
    encoder: str = "auto"
    """auto | nvenc | x264."""
    crf: int = 23
    """Quality: x264 CRF / NVENC CQ."""
    preset: str = "ultrafast"
    """libx264 preset."""
    backend: str = "envpool"
    """Atari backend: envpool (fast, default) or gym (SB3's own wrappers, reference)."""
    stochastic: bool = False
    """Sample actions from the policy instead of taking the most likely one."""
    force: bool = False
    """Re-render milestones whose video already exists."""
    algo: str | None = None
    """Expected algorithm (from the original tool's config); checked against each checkpoint."""
    stack_forwards: bool | None = None
    """Milestones of one architecture share one stacked forward (:class:`gpurender.agents.AgentStack`);
    None: on CUDA only, where a batch-1 forward is bound by kernel launches."""
    max_tiles: int = 16
    """Frames drawn per pass of the renderer's tiled framebuffer."""
    trace: bool = False
    """Write every number each frame's panel shows to ``<video>.trace.jsonl`` beside the video."""
    saliency: str = "off"
    """Saliency maps over the game (:mod:`gpurender.saliency`): ``off``, ``perturbation`` (Greydanus et
    al. 2018) or ``gradient``; the actor's map in cyan, the critic's in magenta, each divided by its
    running maximum in the video."""
    network_view: str = "activations"
    """What the network diagram shows: ``activations`` (each node's mean activation, each edge its
    weight x its source's level) or ``attribution`` (each node's activation x gradient of the
    executed action's logit, signed, in two colours; each edge its weight x its source's
    attribution)."""
    hud: bool = False
    """A panel line with the render's frames/s and each step's inference and drawing
    milliseconds (the original tool's "performance metrics"); off by default, since two renders of
    one seed then differ."""
    workers: int | str = 1
    """Pipelines the job is split into (each its own simulation process, GL context and encoders),
    balanced by frames; ``"auto"`` picks from the machine's cores, GPUs and memory
    (:func:`gpurender.shards.auto_workers`). With ``ray_address``: the number of Ray tasks."""
    ray_address: str | None = None
    """Run the shards as tasks on a Ray cluster: its address (``ray://host:10001``,
    ``host:6379``, ``auto``), or ``""`` for Ray's default (``RAY_ADDRESS``, else a new local
    cluster). None: no Ray."""
    progress_video: bool = False
    """Also write the progress video: the milestones in one 1920 x 1080 video, then a chart of
    their scores (:mod:`gpurender.progress`)."""
    progress_layout: str = "grid"
    """The progress video's layout: ``grid`` (side by side) or ``sequence`` (one after another,
    each after a title card)."""
    milestone_videos: bool = True
    """Write each milestone's own video; False (``gpurender progress``): only the progress video."""

    def __post_init__(self) -> None:
        checked = {
            "model_dir": _paths(self.model_dir),
            "output_dir": Path(self.output_dir),
            "fps": _whole("fps", self.fps, "must be a positive whole number", 1),
            "clip_seconds": _positive("clip_seconds", self.clip_seconds,
                                      "must be a positive, finite number of seconds"),
            "envs_per_milestone": _whole("envs_per_milestone", self.envs_per_milestone, "must be at least 1", 1),
            "seed": _whole("seed", self.seed, "must be a whole number >= 0", 0),
            "crf": _whole("crf", self.crf, "must be a whole number in {}..{} (libx264's range)".format(*CRF_RANGE),
                          *CRF_RANGE),
            "preset": _one_of("preset", self.preset, X264_PRESETS),
            "encoder": _one_of("encoder", self.encoder, ENCODERS),
            "backend": _one_of("backend", self.backend, BACKENDS),
            "max_tiles": _whole("max_tiles", self.max_tiles, "must be at least 1", 1),
            "progress_layout": _one_of("progress_layout", self.progress_layout, PROGRESS_LAYOUTS),
            "saliency": _one_of("saliency", self.saliency, SALIENCY),
            "network_view": _one_of("network_view", self.network_view, NETWORK_VIEWS),
        }
        if self.milestones is not None:
            checked["milestones"] = tuple(str(m) for m in self.milestones)
        if self.workers != "auto":
            checked["workers"] = _whole("workers", self.workers, "must be a whole number >= 1 or auto", 1)
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise ConfigError("ray_address", "must be a Ray cluster address", self.ray_address)
        if self.stack_forwards not in (None, True, False):
            raise ConfigError("stack_forwards", "must be None (auto), True or False", self.stack_forwards)
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.frames < 1:
            raise ConfigError("clip_seconds", f"must last at least one frame at --fps {self.fps}", self.clip_seconds)
        self._check_outputs()

    def _check_outputs(self) -> None:
        """What the progress video does not combine with, each a one-line error."""
        if not (self.milestone_videos or self.progress_video):
            raise GpurenderError("nothing to write: milestone_videos=False needs progress_video=True")
        if self.trace and not self.milestone_videos:
            raise GpurenderError("--trace writes each milestone video's trace, and gpurender progress writes no "
                                 "milestone videos: use gpurender render --progress-video --trace")
        if not self.progress_video:
            return
        if self.ray_address is not None:
            raise GpurenderError("--ray: the progress video draws every milestone in one pipeline on this machine; "
                                 "render the milestone videos with --ray first, then run gpurender progress")
        if self.workers not in (1, "auto"):
            raise GpurenderError(f"--workers {self.workers}: the progress video draws every milestone in one "
                                 "pipeline; render the milestone videos with --workers first, then run "
                                 "gpurender progress")

    @property
    def frames(self) -> int:
        """Frames of each video: ``clip_seconds x fps``, rounded (at least 1, checked on creation)."""
        return round(self.clip_seconds * self.fps)


@dataclass(frozen=True)
class PreviewConfig:
    """How ``gpurender preview`` shows the agents (what it plays comes from a :class:`RenderConfig`)."""

    speed: float = 1.0
    """Pace multiplier: ``fps x speed`` agent steps per second (+/- keys change it)."""
    uncapped: bool = False
    """Draw as fast as possible instead of at the paced rate."""
    output_dir: Path = Path(".")
    """Where screenshots and recordings go."""
    encoder: str = "auto"
    """H.264 encoder for recordings: auto | nvenc | x264."""
    max_frames: int = 0
    """Stop after this many frames (0: run until the window closes)."""
    window_size: tuple[int, int] = (960, 540)
    """Initial window size in screen coordinates."""
    visible: bool = True
    """Show the window (tests drive a hidden one)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "speed", _positive("speed", self.speed, "must be a positive, finite number"))
        object.__setattr__(self, "max_frames", _whole("max_frames", self.max_frames, "must be a whole number >= 0", 0))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "encoder", _one_of("encoder", self.encoder, ENCODERS))


# original tool's YAML key -> RenderConfig field
_YAML_KEYS = {
    ("game", "env_id"): "game",
    ("train", "algo"): "algo",
    ("recording", "fps"): "fps",
    ("recording", "milestone_clip_seconds"): "clip_seconds",
    ("recording", "milestones_pct"): "milestones",
    ("recording", "saliency"): "saliency",
}


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """RenderConfig fields from the original tool's ``conf/config.yaml`` (unknown keys ignored),
    checked as :class:`RenderConfig` checks them; a bad value is a one-line error naming the file
    and the key."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise GpurenderError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise GpurenderError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise GpurenderError(f"{path}: expected a mapping at the top level")
    out: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for (section, key), name in _YAML_KEYS.items():
        block = data.get(section) or {}
        value = block.get(key) if isinstance(block, dict) else None
        if value is None:
            continue
        keys[name] = f"{section}.{key}"
        if name == "milestones":
            items = value if isinstance(value, list) else [value]
            try:
                value = tuple(f"{float(v):g}" for v in items)
            except (TypeError, ValueError):
                raise GpurenderError(f"{path}: {section}.{key} must be a list of percentages, got {value!r}") from None
        elif name == "saliency" and value is False:
            value = "off"  # YAML 1.1 reads a bare off as false
        elif name in ("game", "algo"):
            value = str(value).upper().replace("-", "") if name == "algo" else str(value)
        out[name] = value
    try:
        checked = RenderConfig(**out)
    except ConfigError as exc:
        raise GpurenderError(f"{path}: {keys.get(exc.field, exc.field)} {exc.requirement}, got {exc.value!r}") from None
    return {name: getattr(checked, name) for name in out}


def merge(base: RenderConfig, overrides: dict[str, Any]) -> RenderConfig:
    """``base`` with the non-None ``overrides`` applied."""
    names = {f.name for f in fields(RenderConfig)}
    return replace(base, **{k: v for k, v in overrides.items() if k in names and v is not None})


__all__ = ["BACKENDS", "ENCODERS", "NETWORK_VIEWS", "PROGRESS_LAYOUTS", "SALIENCY", "X264_PRESETS", "ConfigError",
           "PreviewConfig", "RenderConfig", "flag", "merge", "read_yaml_config"]
