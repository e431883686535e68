"""``gpurender render | demo | preview | bench | info``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from gpurender.errors import GpurenderError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", nargs="+", metavar="PATH",
                   help="run folder(s), milestones/ folder(s) or checkpoint .zip files")
    p.add_argument("--config", type=Path,
                   help="the original tool's conf/config.yaml (game, algo, fps, clip length, milestones)")
    p.add_argument("--game", help="Atari game the agents play (default Breakout)")
    p.add_argument("--seed", type=int, help="env e of each milestone uses seed+e (default 0)")
    p.add_argument("--device", help="torch device: auto (default), cpu, cuda, cuda:1")
    p.add_argument("--backend", choices=("envpool", "gym"), help="Atari backend (default envpool)")
    p.add_argument("--stochastic", action="store_true", default=None,
                   help="sample actions instead of the most likely one")


def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=Path, help="where videos go (default ./videos)")
    p.add_argument("--clip-seconds", type=float, help="length of each video (default 90)")
    p.add_argument("--fps", type=int, help="frames per second (default 30)")
    p.add_argument("--milestones", help="only these milestone labels, e.g. 10,50,100")
    p.add_argument("--envs-per-milestone", type=int, help="games per milestone, one video each (default 1)")
    p.add_argument("--encoder", choices=("auto", "nvenc", "x264"), help="H.264 encoder (default auto)")
    p.add_argument("--crf", type=int, help="quality, lower is better (default 23)")
    p.add_argument("--preset", help="libx264 preset (default ultrafast: at CRF 23 the fastest and the "
                   "sharpest; veryfast makes files ~3x smaller for ~2x the encoding time)")
    p.add_argument("--force", action="store_true", default=None, help="re-render videos that already exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write the job's frames, wall seconds and per-stage seconds here as JSON (benchmarks)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpurender",
                                     description="Analytics videos of trained Atari agents, drawn by shaders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is chosen and why")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render one video per milestone checkpoint")
    _common(r)
    _render_args(r)
    d = sub.add_parser("demo", help="render the bundled demo milestones (no checkpoint needed)")
    d.add_argument("--output-dir", type=Path, default=Path("gpurender-demo"))
    d.add_argument("--clip-seconds", type=float, default=20.0)
    d.add_argument("--device", default="auto")
    d.add_argument("--encoder", choices=("auto", "nvenc", "x264"), default="auto")
    d.add_argument("--force", action="store_true")
    d.add_argument("--quiet", action="store_true")
    pv = sub.add_parser("preview", help="watch an agent live in a window")
    _common(pv)
    pv.add_argument("--fps", type=int, help="agent steps per second at speed 1; also the recordings' rate (default 30)")
    pv.add_argument("--speed", type=float, default=1.0, help="pace multiplier (+/- keys change it)")
    pv.add_argument("--uncapped", action="store_true", help="run as fast as possible and show the fps")
    pv.add_argument("--output-dir", type=Path, default=Path("."), help="screenshots and recordings go here")
    pv.add_argument("--encoder", choices=("auto", "nvenc", "x264"), help="H.264 encoder for recordings (default auto)")
    pv.add_argument("--max-frames", type=int, default=0, help=argparse.SUPPRESS)
    b = sub.add_parser("bench", help="run the benchmark suite")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to benchmarks/bench.py")
    sub.add_parser("info", help="what gpurender finds on this machine")
    return parser


def _render_config(args: argparse.Namespace):
    from gpurender.config import RenderConfig, merge, read_yaml_config

    cfg = RenderConfig()
    if getattr(args, "config", None):
        cfg = merge(cfg, read_yaml_config(args.config))
    if not args.model_dir:
        raise GpurenderError("--model-dir is required (a run folder, its milestones/ folder or .zip files)")
    overrides = {k: getattr(args, k, None) for k in (
        "game", "seed", "device", "backend", "stochastic", "output_dir", "clip_seconds", "fps",
        "envs_per_milestone", "encoder", "crf", "preset", "force")}
    overrides["model_dir"] = tuple(Path(p) for p in args.model_dir)
    if getattr(args, "milestones", None):
        overrides["milestones"] = tuple(x.strip() for x in args.milestones.split(",") if x.strip())
    return merge(cfg, overrides)


def _print_summary(report) -> None:
    rows = [("milestone", "frames", "episode returns", "file")]
    for v in report.videos:
        returns = "skipped (exists; --force re-renders)" if v.skipped else (
            ", ".join(f"{x:g}" for x in v.episode_returns) or "no game finished")
        rows.append((v.milestone.display, str(v.frames) if not v.skipped else "-", returns, str(v.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if report.frames:
        print(f"{report.frames} frames in {report.wall_seconds:.1f} s: {report.fps:.1f} frames/s "
              f"({report.encoder}, {report.renderer}, torch on {report.device})")
    for path, msg in report.failures:
        print(f"gpurender: failed: {msg if str(path) in msg else f'{path}: {msg}'}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> int:
    from gpurender.pipeline import render

    cfg = _render_config(args)
    report = render(cfg, progress=not args.quiet)
    _print_summary(report)
    if args.stats_json is not None:
        stats = {"frames": report.frames, "wall_seconds": report.wall_seconds, "fps": report.fps,
                 "first_frame_seconds": report.first_frame_seconds,
                 "stage_seconds": report.stage_seconds, "encoder": report.encoder,
                 "renderer": report.renderer, "device": report.device,
                 "forwards_per_step": report.forwards_per_step}
        args.stats_json.write_text(json.dumps(stats, indent=2) + "\n")
    if report.failures:
        return 1 if any(not v.skipped for v in report.videos) or report.videos else 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gpurender.demo import run_demo

    return run_demo(args)


def cmd_preview(args: argparse.Namespace) -> int:
    from gpurender.preview import run_preview

    return run_preview(args, _render_config(args))


def cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not bench.is_file():
        raise GpurenderError("benchmarks/bench.py not found: run `gpurender bench` from a source checkout")
    sys.argv = [str(bench), *args.args]
    runpy.run_path(str(bench), run_name="__main__")
    return 0


def cmd_info(_args: argparse.Namespace) -> int:
    import torch

    from gpurender.encode import nvenc_unavailable_reason
    from gpurender.render.context import create_headless_context, renderer_name

    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    try:
        ctx = create_headless_context()
        print(f"OpenGL (EGL): {renderer_name(ctx)}")
        ctx.release()
    except GpurenderError as exc:
        print(f"OpenGL (EGL): unavailable: {exc}")
    reason = nvenc_unavailable_reason()
    print(f"NVENC: {'available' if reason is None else reason}")
    try:
        import envpool

        print(f"envpool {envpool.__version__}")
    except ImportError:
        print("envpool: not installed (the gym backend is used: --backend gym)")
    return 0


COMMANDS = {"render": cmd_render, "demo": cmd_demo, "preview": cmd_preview, "bench": cmd_bench, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if "bench" in argv and all(a.startswith("-") for a in argv[: argv.index("bench")]):
        # everything after `bench` goes to benchmarks/bench.py untouched (REMAINDER drops leading options)
        i = argv.index("bench")
        args = parser.parse_args(argv[: i + 1])
        args.args = argv[i + 1 :]
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="gpurender: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except GpurenderError as exc:
        print(f"gpurender: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpurender: interrupted; unfinished videos were removed, finished ones kept", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
