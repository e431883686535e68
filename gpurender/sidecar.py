"""The JSON sidecar beside each video: what made it, and whether a re-run may keep it.

A re-run skips a video only when its sidecar says it was made from the same checkpoint (sha256)
with the settings that decide its frames (:func:`video_settings`); otherwise it is rendered
again, and the reason is logged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gpurender.config import RenderConfig
from gpurender.outputs import write_atomic
from gpurender.trace import saliency_path, trace_path


def sidecar_path(video: Path) -> Path:
    return video.with_suffix(".json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def video_settings(cfg: RenderConfig, game: str, env_index: int, checkpoint_sha256: str) -> dict[str, Any]:
    """The sidecar keys that decide a video's frames, as ``cfg`` asks for env ``env_index`` of
    ``game`` (its resolved name)."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "game": game,
        "seed": cfg.seed + env_index,
        "frames": cfg.frames,
        "fps": cfg.fps,
        "backend": cfg.backend,
        "deterministic": not cfg.stochastic,
        "crf": cfg.crf,
        "preset": cfg.preset,
        "saliency": cfg.saliency,
        "network_view": cfg.network_view,
        "hud": cfg.hud,
    }


def stale_reason(video: Path, wanted: dict[str, Any], trace: bool) -> str | None:
    """Why the existing ``video`` does not answer this run (None: it does and may be kept).
    ``trace``: the run also wants the video's trace file (and, with saliency on, its maps)."""
    side = sidecar_path(video)
    try:
        made = json.loads(side.read_text())
    except FileNotFoundError:
        return f"{side.name} is missing"
    except (OSError, ValueError) as exc:
        return f"{side.name} is unreadable ({exc})"
    differ = [f"{k} {made[k]!r} -> {v!r}" for k, v in wanted.items() if k in made and made[k] != v]
    if differ:
        return "made with other settings: " + ", ".join(differ)
    if trace and not trace_path(video).exists():
        return "it has no trace"
    if trace and wanted.get("saliency", "off") != "off" and not saliency_path(video).exists():
        return f"it has no {saliency_path(video).name}"
    return None


def write_sidecar(video: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` beside ``video`` (through a temporary file: never half-written)."""
    write_atomic(sidecar_path(video), (json.dumps(meta, indent=2) + "\n").encode())
