"""``gpurender demo``: render the bundled milestones of a real PPO Breakout run (trained by
``benchmarks/train_demo.py``) and write a contact sheet, so a newcomer sees a result with no
checkpoint of their own."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from gpurender.errors import GpurenderError


def demo_checkpoints() -> list[Path]:
    """The bundled milestone checkpoints, in training order."""
    folder = Path(str(resources.files("gpurender.demo")))
    found = sorted(folder.glob("*.zip"))
    if not found:
        raise GpurenderError(f"no demo checkpoints in {folder} (is the package installed from a full checkout?)")
    return found


def contact_sheet(videos: list[Path], out: Path, scale: float = 0.5) -> Path:
    """One frame from the middle of each video, side by side, as a PNG."""
    import av
    from PIL import Image

    tiles = []
    for path in videos:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            middle = max(0, (stream.frames or 1) // 2)
            for i, frame in enumerate(container.decode(stream)):
                if i >= middle:
                    img = frame.to_image()
                    break
        tiles.append(img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS))
    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def run_demo(args: argparse.Namespace) -> int:
    from gpurender.cli import _print_summary
    from gpurender.config import RenderConfig
    from gpurender.pipeline import render

    cfg = RenderConfig(
        model_dir=tuple(demo_checkpoints()), output_dir=args.output_dir, game="Breakout",
        clip_seconds=args.clip_seconds, device=args.device, encoder=args.encoder, force=args.force,
    )
    report = render(cfg, progress=not args.quiet)
    _print_summary(report)
    videos = [v.path for v in report.videos if v.path.exists()]
    if videos:
        sheet = contact_sheet(videos, Path(args.output_dir) / "contact_sheet.png")
        print(f"\nvideos in {Path(args.output_dir).resolve()}/ ; contact sheet: {sheet.resolve()}")
    return 1 if report.failures else 0
