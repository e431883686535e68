"""``gpurender render | progress | demo | preview | bench | info``: the one module that reads the
command line. It turns arguments into typed configs (:class:`~gpurender.config.RenderConfig`,
:class:`~gpurender.config.PreviewConfig`) and calls the library with them."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpurender.config import (
    BACKENDS,
    ENCODERS,
    NETWORK_VIEWS,
    X264_PRESETS,
    PreviewConfig,
    RenderConfig,
    merge,
    read_yaml_config,
)
from gpurender.errors import GpurenderError

INTERRUPTED = "gpurender: interrupted; unfinished videos were removed, finished ones kept"
STACK_FORWARDS = {"auto": None, "on": True, "off": False}
_DEFAULT = RenderConfig()


# -- options -----------------------------------------------------------------------------------


def _verbose(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the subcommand it sets verbose, absent it leaves the top level's value
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log what is chosen and why")


def _source(p: argparse.ArgumentParser) -> None:
    """Which checkpoints, which game, how the agents act."""
    from gpurender import demo

    which = p.add_mutually_exclusive_group()
    which.add_argument("--model-dir", nargs="+", metavar="PATH",
                       help="run folder(s), milestones/ folder(s) or checkpoint .zip files")
    which.add_argument("--demo", action="store_true",
                       help=f"use the bundled demo checkpoints (PPO {demo.GAME} at 0, 25, 50 and 100%%) "
                       "instead of --model-dir")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="the original tool's conf/config.yaml (game, algo, fps, clip length, milestones); "
                   "flags override it")
    p.add_argument("--game", help=f"Atari game the agents play: Breakout, BreakoutNoFrameskip-v4, ALE/Breakout-v5 "
                   f"... (default {_DEFAULT.game})")
    p.add_argument("--milestones", metavar="LABELS", help="only these milestone labels, e.g. 10,50,100")
    p.add_argument("--backend", choices=BACKENDS,
                   help=f"Atari backend: envpool (fast) or gym (SB3's own wrappers) (default {_DEFAULT.backend})")
    p.add_argument("--stochastic", action="store_true", default=None,
                   help="sample actions from the policy instead of taking the most likely one")


def _job(p: argparse.ArgumentParser, output_dir: Path, clip_seconds: float, progress: bool = False) -> None:
    """The options ``render``, ``progress`` and ``demo`` share: where, how long, how encoded.
    ``progress``: the helps of the options ``progress`` refuses say so."""
    one = " (refused here: the progress video is drawn by one pipeline)" if progress else ""
    no_trace = " (refused here: gpurender progress writes no milestone videos)" if progress else ""
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help=f"where videos and sidecars go (default {output_dir})")
    p.add_argument("--clip-seconds", type=float, metavar="S", help=f"length of each video (default {clip_seconds:g})")
    p.add_argument("--fps", type=int, metavar="N", help=f"video frame rate, one agent step per frame "
                   f"(default {_DEFAULT.fps})")
    p.add_argument("--seed", type=int, metavar="N",
                   help=f"env e of each milestone is seeded N+e: same seed, same video (default {_DEFAULT.seed})")
    p.add_argument("--device", help="torch device for inference: auto (CUDA if present), cpu, cuda, cuda:1 "
                   "(default auto)")
    p.add_argument("--encoder", choices=ENCODERS, help="H.264 encoder: NVENC where the GPU has one, else "
                   "libx264 (default auto)")
    p.add_argument("--force", action="store_true", default=None, help="re-render videos that already exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--trace", action="store_true", default=None,
                   help="also write every number each frame's panel shows to <video>.trace.jsonl" + no_trace)
    p.add_argument("--saliency", metavar="off|perturbation|gradient",
                   help="saliency maps over the game: the actor's in cyan, the critic's in magenta, each scaled "
                   "by its running maximum in the video; perturbation (Greydanus et al. 2018) or gradient "
                   "(default off)")
    _views(p)
    p.add_argument("--workers", type=_workers, metavar="N|auto",
                   help="split the job into N pipelines (processes, GL contexts, encoders) balanced by frames; "
                   "auto: from the cores, GPUs and memory; with --ray, the number of Ray tasks (default 1)" + one)
    p.add_argument("--ray", nargs="?", const="", dest="ray_address", metavar="ADDRESS",
                   help="run the job as tasks on a Ray cluster (pip install 'gpurender[ray]'): ADDRESS as "
                   "ray.init takes it (ray://head:10001, head:6379, auto); without it RAY_ADDRESS, else a new "
                   "local cluster" + one)
    p.add_argument("--stack-forwards", choices=tuple(STACK_FORWARDS),
                   help="run milestones of one architecture as one stacked forward: auto (on CUDA only), "
                   "on, off (default auto)")


def _views(p: argparse.ArgumentParser) -> None:
    """What the panel shows besides the model's outputs (render, progress, demo, preview)."""
    p.add_argument("--network-view", choices=NETWORK_VIEWS,
                   help="the network diagram: activations (each node's mean activation) or attribution (each "
                   "node's activation x gradient of the executed action's logit, toward it in green, against "
                   f"it in red) (default {_DEFAULT.network_view})")
    p.add_argument("--hud", action="store_true", default=None,
                   help="a panel line with the render's frames/s and each step's inference and drawing "
                   "milliseconds (two renders of one seed then differ)")


def _layout(p: argparse.ArgumentParser, default_note: str) -> None:
    p.add_argument("--layout", dest="progress_layout", metavar="grid|sequence",
                   help="the progress video's layout: grid (the milestones side by side: 2x2 at full size for up "
                   "to 4, 3x3 and 4x4 scaled for up to 16, an even 16 of more) or sequence (each milestone in turn, "
                   f"full screen, after a title card) {default_note}")


def _render_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs-per-milestone", type=int, metavar="N",
                   help=f"independent games per milestone, one video each (default {_DEFAULT.envs_per_milestone})")
    p.add_argument("--crf", type=int, metavar="0-51",
                   help=f"quality: x264 CRF / NVENC CQ, lower is better and larger (default {_DEFAULT.crf})")
    p.add_argument("--preset", metavar="NAME",
                   help=f"libx264 preset: {', '.join(X264_PRESETS)} (default {_DEFAULT.preset}: at CRF 23 the "
                   "fastest and the sharpest; veryfast makes files ~3x smaller for ~2x the encoding time)")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write the job's frames, wall seconds and per-stage seconds here as JSON (benchmarks)")


def build_parser() -> argparse.ArgumentParser:
    from gpurender import demo

    parser = argparse.ArgumentParser(prog="gpurender",
                                     description="Analytics videos of trained Atari agents, drawn by shaders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is chosen and why")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("render", help="render one video per milestone checkpoint")
    _verbose(r)
    _source(r)
    _job(r, _DEFAULT.output_dir, _DEFAULT.clip_seconds)
    _render_only(r)
    r.add_argument("--progress-video", action="store_true", default=None,
                   help="also write the progress video of the milestones (see gpurender progress) from the same "
                   "games")
    _layout(r, f"(with --progress-video; default {_DEFAULT.progress_layout})")

    pg = sub.add_parser("progress", help="render one 1920x1080 video of the whole run (milestones side by side or "
                        "in turn) and a chart of its scores")
    _verbose(pg)
    _source(pg)
    _job(pg, _DEFAULT.output_dir, _DEFAULT.clip_seconds, progress=True)
    _render_only(pg)
    _layout(pg, f"(default {_DEFAULT.progress_layout})")

    d = sub.add_parser("demo", help="render the bundled demo milestones (no checkpoint needed) and a contact sheet")
    _verbose(d)
    _job(d, demo.OUTPUT_DIR, demo.CLIP_SECONDS)

    pv = sub.add_parser("preview", help="watch an agent live in a window")
    _verbose(pv)
    _source(pv)
    pv.add_argument("--seed", type=int, metavar="N", help=f"env seed (default {_DEFAULT.seed})")
    pv.add_argument("--device", help="torch device: auto (default), cpu, cuda, cuda:1")
    pv.add_argument("--fps", type=int, metavar="N",
                    help=f"agent steps per second at speed 1; also the recordings' rate (default {_DEFAULT.fps})")
    pv.add_argument("--speed", type=float, default=PreviewConfig.speed, help="pace multiplier (+/- keys change it)")
    pv.add_argument("--uncapped", action="store_true", help="run as fast as possible and show the fps")
    pv.add_argument("--output-dir", type=Path, default=PreviewConfig.output_dir, metavar="DIR",
                    help="screenshots and recordings go here (default .)")
    pv.add_argument("--encoder", choices=ENCODERS, default=PreviewConfig.encoder,
                    help="H.264 encoder for recordings (default auto)")
    pv.add_argument("--saliency", metavar="off|perturbation|gradient",
                    help="saliency maps over the game, as gpurender render draws them (default off)")
    _views(pv)
    pv.add_argument("--max-frames", type=int, default=PreviewConfig.max_frames, metavar="N",
                    help="close after N frames (default 0: when the window is closed)")

    b = sub.add_parser("bench", help="run the benchmark suite (from a source checkout)")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to benchmarks/bench.py (see bench --help)")

    i = sub.add_parser("info", help="what gpurender finds on this machine")
    _verbose(i)
    return parser


# -- arguments -> configs ----------------------------------------------------------------------


def render_config(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> RenderConfig:
    """The :class:`RenderConfig` that ``args`` (of ``render`` or ``preview``) describe: defaults,
    then ``--config``'s YAML, then the flags given; ``skip`` names fields the command keeps for
    itself."""
    from gpurender.demo import GAME, demo_checkpoints

    cfg = _DEFAULT
    if args.config is not None:
        cfg = merge(cfg, read_yaml_config(args.config))
    if args.demo:
        model_dir: tuple[Path, ...] = tuple(demo_checkpoints())
        if args.game is None:
            cfg = merge(cfg, {"game": GAME})
    elif args.model_dir:
        model_dir = tuple(Path(p) for p in args.model_dir)
    else:
        raise GpurenderError("--model-dir is required (a run folder, its milestones/ folder or .zip files; "
                             "--demo uses the bundled checkpoints)")
    overrides = _flags(args, "game", "backend", "stochastic")
    overrides["model_dir"] = model_dir
    if args.milestones:
        overrides["milestones"] = tuple(x.strip() for x in args.milestones.split(",") if x.strip())
    overrides.update(_job_flags(args))
    return merge(cfg, {k: v for k, v in overrides.items() if k not in skip})


def _flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in names}


def _job_flags(args: argparse.Namespace) -> dict[str, Any]:
    """RenderConfig fields from the options of :func:`_job` and :func:`_render_only` present in ``args``."""
    out = _flags(args, "output_dir", "clip_seconds", "fps", "seed", "device", "encoder", "force", "trace",
                 "envs_per_milestone", "crf", "preset", "workers", "ray_address", "progress_video", "progress_layout",
                 "saliency", "network_view", "hud")
    stack = getattr(args, "stack_forwards", None)
    if stack is not None:
        out["stack_forwards"] = STACK_FORWARDS[stack]
    return out


def _workers(text: str) -> int | str:
    """``--workers``: a number, or ``auto`` (RenderConfig checks the range)."""
    try:
        return int(text)
    except ValueError:
        return text


def preview_config(args: argparse.Namespace) -> PreviewConfig:
    return PreviewConfig(speed=args.speed, uncapped=args.uncapped, output_dir=args.output_dir, encoder=args.encoder,
                         max_frames=args.max_frames)


# -- commands ----------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    if args.progress_layout is not None and not args.progress_video:
        raise GpurenderError("--layout is the progress video's layout: add --progress-video (or run gpurender "
                             "progress)")
    cfg = render_config(args)  # bad flags fail before the heavy imports
    return _render_and_report(cfg, args)


def cmd_progress(args: argparse.Namespace) -> int:
    cfg = merge(render_config(args), {"progress_video": True, "milestone_videos": False})
    return _render_and_report(cfg, args)


def _render_and_report(cfg: RenderConfig, args: argparse.Namespace) -> int:
    """Run the job, print its summary (and ``--stats-json``); -> the exit code."""
    from gpurender.pipeline import render
    from gpurender.summary import print_summary

    report = render(cfg, progress=not args.quiet)
    print_summary(report)
    if args.stats_json is not None:
        stats = {"frames": report.frames, "wall_seconds": report.wall_seconds, "fps": report.fps,
                 "first_frame_seconds": report.first_frame_seconds,
                 "stage_seconds": report.stage_seconds, "encoder": report.encoder,
                 "renderer": report.renderer, "device": report.device,
                 "forwards_per_step": report.forwards_per_step}
        args.stats_json.write_text(json.dumps(stats, indent=2) + "\n")
    if report.failures:
        return 1 if report.videos or report.progress is not None else 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gpurender.demo import demo_config, run_demo

    flags = {k: v for k, v in _job_flags(args).items() if v is not None}
    return run_demo(demo_config(**flags), progress=not args.quiet)


def cmd_preview(args: argparse.Namespace) -> int:
    cfg, pcfg = render_config(args, skip=("output_dir", "encoder")), preview_config(args)
    from gpurender.preview import run_preview

    return run_preview(cfg, pcfg)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not bench.is_file():
        raise GpurenderError(f"{bench} not found: `gpurender bench` runs from a source checkout "
                             "(git clone, then pip install -e '.[bench]')")
    spec = importlib.util.spec_from_file_location("gpurender_bench", bench)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return int(module.main(args.args, prog="gpurender bench"))


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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "render": cmd_render, "progress": cmd_progress, "demo": cmd_demo, "preview": cmd_preview, "bench": cmd_bench,
    "info": cmd_info}


# -- entry -------------------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so a render unwinds as it does on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated(signum)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread;
    the previous handler is restored after. Elsewhere than the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    if "bench" in argv and all(a.startswith("-") for a in argv[: argv.index("bench")]):
        # everything after `bench` goes to benchmarks/bench.py untouched (REMAINDER drops leading options)
        i = argv.index("bench")
        args = parser.parse_args(argv[: i + 1])
        args.args = argv[i + 1 :]
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="gpurender: %(message)s")
    try:
        with sigterm_as_interrupt():
            return COMMANDS[args.command](args)
    except GpurenderError as exc:
        print(f"gpurender: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(INTERRUPTED, file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
