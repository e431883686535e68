"""Copy demo milestones into the package, stripped to what inference needs.

SB3 still loads the result with ``PPO.load``: the optimizer state is replaced by a fresh (empty)
Adam state, the rollout leftovers (``_last_obs`` ...) are excluded, and the archive is
re-compressed. Policy weights are untouched.

    python benchmarks/ship_demo.py runs/demo/milestones/step_*_pct_{0,25,100}.zip
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

import torch
from stable_baselines3 import PPO

DEST = Path(__file__).resolve().parents[1] / "gpurender" / "demo"
EXCLUDE = ["_last_obs", "_last_original_obs", "_last_episode_starts", "ep_info_buffer", "ep_success_buffer"]


def ship(src: Path, dst: Path) -> None:
    model = PPO.load(src, device="cpu")
    model.policy.optimizer = torch.optim.Adam(model.policy.parameters(), lr=model.lr_schedule(1.0), eps=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.zip"
        model.save(raw, exclude=EXCLUDE)
        with zipfile.ZipFile(raw) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_LZMA) as zout:
            for item in zin.infolist():
                zout.writestr(item.filename, zin.read(item.filename))
    print(f"{src} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--dest", type=Path, default=DEST)
    args = p.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for src in args.checkpoints:
        ship(src, args.dest / src.name)


if __name__ == "__main__":
    main()
