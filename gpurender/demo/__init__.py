"""``gpurender demo``: render the bundled milestones of a real PPO RoadRunner run (trained by
``benchmarks/train_demo.py``) and write a captioned contact sheet, so a newcomer sees a result
with no checkpoint of their own."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from gpurender.config import RenderConfig
from gpurender.errors import GpurenderError

OUTPUT_DIR = Path("gpurender-demo")
"""Where ``gpurender demo`` writes by default."""
CLIP_SECONDS = 20.0
"""The demo's default clip length: long enough to see each milestone play."""
GAME = "RoadRunner"
"""The game the bundled checkpoints were trained on."""
STOCHASTIC = True
"""``gpurender demo`` samples the agents' actions (seeded: the same command, the same videos), as
rl-zoo plays Atari agents by default: with the most likely action this short run's agents stand
still on the road once they have eaten the first seeds (benchmarks/results/train_demo.md)."""

CAPTION_BACKGROUND = (24, 24, 28)
CAPTION_TEXT = (235, 235, 235)


def demo_checkpoints() -> list[Path]:
    """The bundled milestone checkpoints, in training order."""
    folder = Path(str(resources.files("gpurender.demo")))
    found = sorted(folder.glob("*.zip"))
    if not found:
        raise GpurenderError(f"no demo checkpoints in {folder} (is the package installed from a full checkout?)")
    return found


def demo_config(**fields: Any) -> RenderConfig:
    """The demo's render job: the bundled checkpoints on :data:`GAME` into ``gpurender-demo/``,
    20 s clips, sampled actions (:data:`STOCHASTIC`), each milestone's video and the run's
    progress video (grid); ``fields`` override any of it (``model_dir`` and ``game`` are the
    demo's own)."""
    defaults: dict[str, Any] = {"output_dir": OUTPUT_DIR, "clip_seconds": CLIP_SECONDS, "progress_video": True,
                                "stochastic": STOCHASTIC}
    return RenderConfig(**{**defaults, **fields, "model_dir": tuple(demo_checkpoints()), "game": GAME})


def _middle_frame(path: Path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        middle = max(0, (stream.frames or 1) // 2)
        image = None
        for i, frame in enumerate(container.decode(stream)):
            image = frame.to_image()
            if i >= middle:
                break
    if image is None:
        raise GpurenderError(f"{path}: no frame to put on the contact sheet")
    return image


def contact_sheet(videos: Sequence[tuple[str, Path]], out: Path, scale: float = 0.5) -> Path:
    """One frame from the middle of each ``(caption, video)``, side by side, each captioned
    underneath in the panel's own font (DejaVu Sans Mono), as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    from gpurender.render.atlas import font_path

    tiles = []
    for _, path in videos:
        img = _middle_frame(path)
        tiles.append(img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS))
    tile_h = max(t.height for t in tiles)
    font = ImageFont.truetype(str(font_path(bold=True)), max(12, round(36 * scale)))
    band = round(font.size * 1.8)
    sheet = Image.new("RGB", (sum(t.width for t in tiles), tile_h + band), CAPTION_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    x = 0
    for (caption, _), tile in zip(videos, tiles, strict=True):
        sheet.paste(tile, (x, 0))
        draw.text((x + tile.width / 2, tile_h + band / 2), caption, fill=CAPTION_TEXT, font=font, anchor="mm")
        x += tile.width
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def run_demo(cfg: RenderConfig, progress: bool = True) -> int:
    """Render ``cfg`` (normally :func:`demo_config`: the milestone videos and the progress video),
    print the summary and write ``contact_sheet.png`` beside the videos; the exit code (1 if a
    milestone failed)."""
    from gpurender.pipeline import render
    from gpurender.summary import print_summary

    report = render(cfg, progress=progress)
    print_summary(report)
    several = cfg.envs_per_milestone > 1
    videos = [(f"{v.milestone.display} env {v.env_index}" if several else v.milestone.display, v.path)
              for v in report.videos if v.path.exists()]
    if videos:
        sheet = contact_sheet(videos, cfg.output_dir / "contact_sheet.png")
        print(f"\nvideos in {cfg.output_dir.resolve()}/ ; contact sheet: {sheet.resolve()}")
    return 1 if report.failures else 0


__all__ = ["contact_sheet", "demo_checkpoints", "demo_config", "run_demo"]
