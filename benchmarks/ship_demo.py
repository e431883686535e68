"""Copy demo milestones into the package, stripped to what inference needs.

SB3 still loads the result with ``PPO.load``: the optimizer state is replaced by a fresh (empty)
Adam state, the rollout leftovers (``_last_obs`` ...) are excluded, and the archive is
re-compressed with deflate at its strongest level, as SB3 itself writes archives (LZMA packs the
float weights barely smaller and costs seconds of CPU to read at every render: benchmarks/README.md,
issue 15). Policy weights are untouched.

    python benchmarks/ship_demo.py runs/demo/milestones/step_*_pct_{0,25,100}.zip
    python benchmarks/ship_demo.py --recompress gpurender/demo/*.zip   # members kept byte for byte
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

import torch
from stable_baselines3 import PPO

DEST = Path(__file__).resolve().parents[1] / "gpurender" / "demo"
COMPRESSLEVEL = 9
EXCLUDE = ["_last_obs", "_last_original_obs", "_last_episode_starts", "ep_info_buffer", "ep_success_buffer"]


def ship(src: Path, dst: Path) -> None:
    model = PPO.load(src, device="cpu")
    model.policy.optimizer = torch.optim.Adam(model.policy.parameters(), lr=model.lr_schedule(1.0), eps=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.zip"
        model.save(raw, exclude=EXCLUDE)
        recompress(raw, dst)
    print(f"{src} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB)")


def recompress(src: Path, dst: Path) -> None:
    """Rewrite the archive ``src`` as ``dst`` (may be the same file) with deflate level 9: the same
    members in the same order, each with its bytes, name, time stamp and attributes."""
    with zipfile.ZipFile(src) as zin:
        members = [(item, zin.read(item)) for item in zin.infolist()]
    with zipfile.ZipFile(dst, "w") as zout:
        for item, data in members:
            info = zipfile.ZipInfo(item.filename, item.date_time)
            info.external_attr, info.create_system = item.external_attr, item.create_system
            info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, data, compresslevel=COMPRESSLEVEL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--dest", type=Path, default=DEST)
    p.add_argument("--recompress", action="store_true",
                   help="only re-compress already shipped archives in place (members unchanged)")
    args = p.parse_args()
    if args.recompress:
        for path in args.checkpoints:
            before = path.stat().st_size
            recompress(path, path)
            print(f"{path}: {before / 1e6:.2f} -> {path.stat().st_size / 1e6:.2f} MB")
        return
    args.dest.mkdir(parents=True, exist_ok=True)
    for src in args.checkpoints:
        ship(src, args.dest / src.name)


if __name__ == "__main__":
    main()
