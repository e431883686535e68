"""Typed configuration of a render job; also reads the original tool's ``conf/config.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from gpurender.errors import GpurenderError


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

    @property
    def frames(self) -> int:
        return max(1, round(self.clip_seconds * self.fps))


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


# original tool's YAML key -> RenderConfig field
_YAML_KEYS = {
    ("game", "env_id"): "game",
    ("train", "algo"): "algo",
    ("recording", "fps"): "fps",
    ("recording", "milestone_clip_seconds"): "clip_seconds",
    ("recording", "milestones_pct"): "milestones",
}


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """RenderConfig fields from the original tool's ``conf/config.yaml`` (unknown keys ignored)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise GpurenderError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise GpurenderError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise GpurenderError(f"{path}: expected a mapping at the top level")
    out: dict[str, Any] = {}
    for (section, key), name in _YAML_KEYS.items():
        value = (data.get(section) or {}).get(key)
        if value is None:
            continue
        if name == "milestones":
            value = tuple(f"{float(v):g}" for v in (value if isinstance(value, list) else [value]))
        elif name == "fps":
            value = int(value)
        elif name == "clip_seconds":
            value = float(value)
        elif name == "algo":
            value = str(value).upper().replace("-", "")
        out[name] = value
    return out


def merge(base: RenderConfig, overrides: dict[str, Any]) -> RenderConfig:
    """``base`` with the non-None ``overrides`` applied."""
    names = {f.name for f in fields(RenderConfig)}
    return replace(base, **{k: v for k, v in overrides.items() if k in names and v is not None})


__all__ = ["PreviewConfig", "RenderConfig", "merge", "read_yaml_config"]
