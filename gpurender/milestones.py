"""Find the checkpoints of a training run, give each a stable label and order, and read the two
archive members rendering needs (:func:`read_checkpoint`, without torch).

Recognised names (the original tool's and SB3 / rl-zoo's)::

    pct_50  milestone_50  step_12345_pct_50  50pct  50_percent   (in checkpoint_*, model_*, step_*, pct_*.zip)
    rl_model_<N>_steps.zip                                        (SB3 CheckpointCallback)
    best_model.zip  final_model.zip  model.zip
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpurender.errors import GpurenderError

_PCT_PATTERNS = (
    re.compile(r"(?:^|_)pct_?(\d+(?:\.\d+)?)(?:_|$)"),
    re.compile(r"(?:^|_)milestone_?(\d+(?:\.\d+)?)(?:_|$)"),
    re.compile(r"(?:^|_)(\d+(?:\.\d+)?)_?(?:pct|percent)(?:_|$)"),
)
_STEPS_PATTERNS = (
    re.compile(r"^rl_model_(\d+)_steps$"),
    re.compile(r"(?:^|_)steps?_(\d+)(?:_|$)"),
    re.compile(r"(?:^|_)(\d+)_steps(?:_|$)"),
)
_NAMED = {"final_model": 1, "model": 2, "best_model": 3}


@dataclass(frozen=True, order=True)
class Milestone:
    """One checkpoint of a run, labelled by training progress."""

    sort_key: tuple[float, float, int, str]
    path: Path
    pct: float | None = None
    """Percent of training, when the file name says it."""
    steps: int | None = None
    """Environment steps, when the file name says it."""
    named: str | None = None
    """``best_model`` / ``final_model`` / ``model`` for checkpoints named by role, not progress."""

    @property
    def label(self) -> str:
        """Short label used in titles, ordering and ``--milestones`` selection: ``50``, ``12345``..."""
        if self.pct is not None:
            return f"{self.pct:g}"
        if self.steps is not None:
            return str(self.steps)
        return self.named or self.path.stem

    @property
    def display(self) -> str:
        if self.pct is not None:
            return f"{self.pct:g}%"
        if self.steps is not None:
            return f"{self.steps:,} steps"
        return self.label

    @property
    def slug(self) -> str:
        """The part of output file names that identifies the milestone."""
        if self.pct is not None:
            return f"pct_{self.pct:g}"
        if self.steps is not None:
            return f"steps_{self.steps}"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.label)

    @property
    def video_name(self) -> str:
        return f"step_post_training_{self.slug}_analytics.mp4"


def parse_checkpoint_name(path: Path) -> Milestone | None:
    """Label a checkpoint from its file name; ``None`` if the name is not a known checkpoint name."""
    if path.suffix != ".zip":
        return None
    stem = path.stem
    low = stem.lower()
    pct = steps = None
    for pat in _PCT_PATTERNS:
        if m := pat.search(low):
            pct = float(m.group(1))
            break
    for pat in _STEPS_PATTERNS:
        if m := pat.search(low):
            steps = int(m.group(1))
            break
    named = low if low in _NAMED else None
    known_prefix = low.startswith(("checkpoint", "model", "step", "pct", "rl_model", "milestone"))
    if pct is None and steps is None and named is None and not known_prefix:
        return None
    # Progress-labelled checkpoints first (by percent, then steps); role names after, final < best.
    key = (
        pct if pct is not None else float("inf"),
        float(steps) if steps is not None else float("inf"),
        _NAMED.get(named or "", 0),
        stem,
    )
    return Milestone(sort_key=key, path=path, pct=pct, steps=steps, named=named)


def _checkpoints_in(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.glob("*.zip") if p.is_file())
    sub = folder / "milestones"
    if sub.is_dir():
        found += sorted(p for p in sub.glob("*.zip") if p.is_file())
    return found


def find_milestones(sources: Sequence[str | Path], select: Iterable[str] | None = None) -> list[Milestone]:
    """Resolve ``--model-dir`` arguments (run folders, ``milestones/`` folders or ``.zip`` files).

    ``select`` keeps only the milestones whose label is listed (``50`` matches ``pct_50``).
    Raises :class:`GpurenderError` with a one-line reason when nothing usable is found.
    """
    if not sources:
        raise GpurenderError("no checkpoints given: pass --model-dir DIR or checkpoint .zip files")
    milestones: dict[Path, Milestone] = {}
    for src in map(Path, sources):
        if not src.exists():
            raise GpurenderError(f"{src}: no such file or folder")
        if src.is_dir():
            paths = _checkpoints_in(src)
            if not paths:
                raise GpurenderError(f"{src}: no checkpoints (*.zip) in this folder or its milestones/")
            for p in paths:
                if (m := parse_checkpoint_name(p)) is not None:
                    milestones[p.resolve()] = m
            if not any(p.resolve() in milestones for p in paths):
                names = ", ".join(p.name for p in paths[:3])
                raise GpurenderError(f"{src}: no checkpoint with a recognised name (found {names})")
        else:
            m = parse_checkpoint_name(src) or Milestone((float("inf"), float("inf"), 0, src.stem), src)
            milestones[src.resolve()] = m
    chosen = sorted(milestones.values())
    if select is not None:
        wanted = {s.strip().rstrip("%") for s in select if s.strip()}
        chosen = [m for m in chosen if m.label in wanted or m.slug in wanted or m.path.stem in wanted]
        if not chosen:
            have = ", ".join(m.label for m in sorted(milestones.values()))
            raise GpurenderError(f"none of the milestones {sorted(wanted)} found (have: {have})")
    slugs = [m.slug for m in chosen]
    if len(set(slugs)) != len(slugs):
        dup = next(s for s in slugs if slugs.count(s) > 1)
        both = ", ".join(str(m.path) for m in chosen if m.slug == dup)
        raise GpurenderError(f"two checkpoints share the milestone label {dup!r} ({both}); pass only one of them")
    return chosen


def read_checkpoint(path: Path, policy: bool = True) -> tuple[str, bytes]:
    """The two members a :class:`gpurender.agents.Agent` needs, decompressed: (``data`` JSON,
    ``policy.pth`` bytes, or b"" with ``policy=False``). zipfile checks each member's CRC as it
    reads it, so a damaged member fails here with a one-line reason."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "data" not in names or "policy.pth" not in names:
                raise GpurenderError(f"{path}: not a Stable-Baselines3 checkpoint (no data/policy.pth inside)")
            return zf.read("data").decode(), zf.read("policy.pth") if policy else b""
    except FileNotFoundError:
        raise GpurenderError(f"{path}: no such checkpoint") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise GpurenderError(f"{path}: not a readable checkpoint zip, corrupt or truncated ({exc})") from None
