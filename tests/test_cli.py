"""``python -m gpurender render`` end to end in a subprocess: playable videos and their sidecars,
re-runs, the original tool's YAML, and every way a run can go wrong (Ctrl-C, SIGTERM, bad
checkpoints, unwritable output, bad arguments and numbers), each a one-line message and a
meaningful exit code; the parser's own contract (help texts, -v anywhere) in process."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from _video import REPO, cli_env, decode, message_lines, run_cli, start_cli, wait_cli

from gpurender.cli import INTERRUPTED, build_parser, parse_args
from gpurender.encode import nvenc_unavailable_reason

VIDEO = "step_post_training_pct_10_analytics.mp4"


def _corrupt_deflated_copy(src: Path, dst: Path) -> None:
    """A re-zipped (deflated) checkpoint with damaged bytes inside policy.pth."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    raw = bytearray(dst.read_bytes())
    with zipfile.ZipFile(dst) as z:
        start = z.getinfo("policy.pth").header_offset + 200
    raw[start : start + 2000] = bytes(b ^ 0x5A for b in raw[start : start + 2000])
    dst.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def run_dir(ppo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: a good checkpoint at 10% and two broken ones at 50% and 90%."""
    run = tmp_path_factory.mktemp("run")
    shutil.copy(ppo_checkpoint, run / "pct_10.zip")
    _corrupt_deflated_copy(ppo_checkpoint, run / "pct_50.zip")
    (run / "pct_90.zip").write_bytes(ppo_checkpoint.read_bytes()[:4096])  # truncated download
    return run


@pytest.fixture(scope="module")
def first_render(run_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("videos")
    proc = run_cli("render", "--model-dir", run_dir, "--output-dir", out, "--clip-seconds", "1", "--fps", "30",
                   "--seed", "0", "--device", "cpu", "--quiet")
    return proc, out


def _no_partials(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*") if "partial" in p.name]
    assert leftovers == [], f"partial files left behind: {leftovers}"


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("gpurender: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# A good checkpoint beside broken ones


def test_bad_checkpoints_are_reported_and_the_good_one_renders(first_render, run_dir: Path):
    proc, out = first_render
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for bad in ("pct_50.zip", "pct_90.zip"):
        assert str(run_dir / bad) in proc.stderr, f"{bad} not reported:\n{proc.stderr}"
    assert str(run_dir / "pct_10.zip") not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [VIDEO.replace(".mp4", ".json"), VIDEO]
    _no_partials(out)


def test_video_is_h264_960x540_and_plays_to_the_end(first_render):
    _, out = first_render
    d = decode(out / VIDEO)
    assert (d.codec, d.width, d.height, d.pix_fmt, d.fps) == ("h264", 960, 540, "yuv420p", 30.0)
    assert len(d.frames) == 30  # clip_seconds x fps, every one decodable


def test_sidecar_describes_the_video(first_render, run_dir: Path):
    _, out = first_render
    meta = json.loads((out / VIDEO).with_suffix(".json").read_text())
    ckpt = run_dir / "pct_10.zip"
    assert Path(meta["checkpoint"]) == ckpt.resolve()
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["game"] == "Breakout" and meta["algorithm"] == "PPO"
    assert meta["seed"] == 0 and meta["frames"] == 30 and meta["fps"] == 30
    assert isinstance(meta["episode_returns"], list)
    assert all(isinstance(x, int | float) for x in meta["episode_returns"])
    assert meta["render_fps"] > 0
    assert meta["encoder"] == ("libx264" if nvenc_unavailable_reason() else "h264_nvenc")


# ---------------------------------------------------------------------------------------------
# Re-runs and the original tool's config


def test_rerun_skips_then_force_with_yaml_config_rerenders(first_render, run_dir: Path, tmp_path: Path):
    _, first_out = first_render
    out = tmp_path / "videos"
    shutil.copytree(first_out, out)
    video = out / VIDEO
    before = video.read_bytes()
    ckpt = run_dir / "pct_10.zip"

    proc = run_cli("render", "--model-dir", ckpt, "--output-dir", out, "--clip-seconds", "1", "--device", "cpu",
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout, proc.stdout
    assert video.read_bytes() == before

    config = tmp_path / "config.yaml"
    config.write_text(
        "game:\n  env_id: BreakoutNoFrameskip-v4\n"
        "train:\n  algo: ppo\n"
        "recording:\n  fps: 15\n  milestone_clip_seconds: 1\n"
    )
    proc = run_cli("render", "--model-dir", ckpt, "--output-dir", out, "--config", config, "--force",
                   "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" not in proc.stdout
    d = decode(video)
    assert d.fps == 15.0 and len(d.frames) == 15
    meta = json.loads(video.with_suffix(".json").read_text())
    assert meta["fps"] == 15 and meta["frames"] == 15
    _no_partials(out)


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def _interrupted_render(run_dir: Path, out: Path, interrupt) -> tuple[subprocess.CompletedProcess, list]:
    """A 60 s render into ``out``, ``interrupt(proc)`` called once its first partial video exists;
    -> the finished process and its descendants (psutil processes) just before the interrupt."""
    psutil = pytest.importorskip("psutil")
    proc = start_cli("render", "--model-dir", run_dir / "pct_10.zip", "--output-dir", out, "--clip-seconds", "60",
                     "--device", "cpu", "--quiet")
    tree: list = []
    try:
        deadline = time.monotonic() + 180
        while not (out.is_dir() and any("partial" in p.name for p in out.iterdir())):
            assert proc.poll() is None, "render ended before writing anything"
            assert time.monotonic() < deadline, "no partial video appeared"
            time.sleep(0.02)
        tree = psutil.Process(proc.pid).children(recursive=True)
        interrupt(proc)
    finally:
        done = wait_cli(proc, timeout=120)
    assert not list(out.glob("*_analytics.mp4")) and not list(out.glob("*.json"))
    _no_partials(out)
    return done, tree


def _still_running(procs: list, within: float = 5.0) -> list:
    """The processes of ``procs`` still running (zombies count as gone) after up to ``within`` s."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + within
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_interrupt_leaves_no_partial_or_final_video(run_dir: Path, tmp_path: Path):
    done, _ = _interrupted_render(run_dir, tmp_path / "videos", lambda proc: proc.send_signal(signal.SIGINT))
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "interrupted" in done.stderr


def test_sigterm_is_handled_like_ctrl_c(run_dir: Path, tmp_path: Path):
    """``kill`` (a scheduler's timeout, systemd, docker stop): the Ctrl-C message, exit 128+15,
    nothing half-written, and no process of the render's tree left behind."""
    done, tree = _interrupted_render(run_dir, tmp_path / "videos", lambda proc: proc.send_signal(signal.SIGTERM))
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert message_lines(done.stderr) == [INTERRUPTED], done.stderr
    assert tree, "the render started no simulation process"
    left = _still_running(tree)
    assert left == [], f"outlived the render: {[p.cmdline() for p in left]}"


def test_simulation_process_killed_is_one_line_error(run_dir: Path, tmp_path: Path):
    """The child that steps the envs dies mid-run (the OOM killer, say): a one-line error, a
    non-zero exit, nothing half-written left behind."""
    psutil = pytest.importorskip("psutil")

    def kill_simulation(proc: subprocess.Popen) -> None:
        children = psutil.Process(proc.pid).children()
        sim = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(sim) == 1, [c.cmdline() for c in children]
        sim[0].kill()

    done, _ = _interrupted_render(run_dir, tmp_path / "videos", kill_simulation)
    assert done.returncode == 2, done.stderr
    assert message_lines(done.stderr) == ["gpurender: error: the simulation process died (killed by SIGKILL; "
                                          "out of memory?)"], done.stderr


# ---------------------------------------------------------------------------------------------
# Input and output errors: one line, exit code 2, no traceback


@pytest.fixture(scope="module")
def bad_runs(run_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Each bad invocation, all started at once (each pays the interpreter's start-up)."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty").mkdir()
    (tmp / "not_a_folder").write_text("")
    good, out = run_dir / "pct_10.zip", tmp / "out"
    bad_yaml = tmp / "config.yaml"
    bad_yaml.write_text("recording:\n  fps: 0\n  milestone_clip_seconds: 1\n")
    cases = {  # arguments, what the message must name
        "missing folder": (["--model-dir", tmp / "nope", "--output-dir", out], str(tmp / "nope")),
        "empty folder": (["--model-dir", tmp / "empty", "--output-dir", out], str(tmp / "empty")),
        "unknown game": (["--model-dir", good, "--game", "Brekout", "--output-dir", out], "did you mean Breakout"),
        "unwritable output": (["--model-dir", good, "--output-dir", tmp / "not_a_folder" / "videos"],
                              str(tmp / "not_a_folder" / "videos")),
        # each of these rendered (or silently rendered nothing, or ended in a PyAV traceback) before
        "fps 0": (["--model-dir", good, "--output-dir", out, "--fps", "0"], "--fps must be a positive whole"),
        "negative clip": (["--model-dir", good, "--output-dir", out, "--clip-seconds", "-3"],
                          "--clip-seconds must be a positive"),
        "no envs": (["--model-dir", good, "--output-dir", out, "--envs-per-milestone", "0"],
                    "--envs-per-milestone must be at least 1"),
        "bogus preset": (["--model-dir", good, "--output-dir", out, "--preset", "bogus"],
                         "--preset must be one of ultrafast, superfast"),
        "crf 99": (["--model-dir", good, "--output-dir", out, "--crf", "99"], "--crf must be a whole number in 0..51"),
        "yaml fps 0": (["--model-dir", good, "--output-dir", out, "--config", bad_yaml],
                       f"{bad_yaml}: recording.fps must be a positive whole number, got 0"),
    }
    started = {case: start_cli("render", *args, "--quiet") for case, (args, _) in cases.items()}
    results = {case: (wait_cli(proc), cases[case][1]) for case, proc in started.items()}
    return results, tmp / "out"


@pytest.mark.parametrize("case", ["missing folder", "empty folder", "unknown game", "unwritable output", "fps 0",
                                  "negative clip", "no envs", "bogus preset", "crf 99", "yaml fps 0"])
def test_bad_arguments_are_one_line_errors(case: str, bad_runs):
    results, out = bad_runs
    proc, expect = results[case]
    assert proc.returncode == 2, proc.stderr
    assert expect in _one_line_error(proc)
    assert not out.exists() or not any(out.iterdir())


def test_help():
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0 and "render" in proc.stdout
    proc = run_cli("render", "--help", timeout=60)
    assert proc.returncode == 0
    for flag in ("--model-dir", "--output-dir", "--clip-seconds", "--fps", "--config", "--force"):
        assert flag in proc.stdout


def _options(parser) -> dict[str, list]:
    """Every subcommand's options (``-h`` aside), by subcommand."""
    import argparse

    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [a for a in p._actions if not isinstance(a, argparse._HelpAction)]
            for name, p in sub.choices.items()}


def test_every_option_of_every_subcommand_has_help():
    import argparse

    options = _options(build_parser())
    assert set(options) == {"render", "progress", "demo", "preview", "bench", "info"}
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, actions in options.items()
               for a in actions if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []
    demo = {s for a in options["demo"] for s in a.option_strings}
    assert {"--output-dir", "--clip-seconds", "--fps", "--trace", "--stack-forwards", "-v"} <= demo
    for name in ("render", "progress", "preview"):
        assert {"--demo", "--model-dir"} <= {s for a in options[name] for s in a.option_strings}


@pytest.mark.parametrize("command", ["render --demo", "demo", "preview --demo", "info"])
def test_verbose_before_or_after_the_subcommand(command: str):
    words = command.split()
    assert parse_args(["-v", *words]).verbose
    assert parse_args([*words, "-v"]).verbose
    assert parse_args([words[0], "--verbose", *words[1:]]).verbose
    assert not parse_args(words).verbose


def test_render_flags_reach_the_config():
    from gpurender.cli import render_config
    from gpurender.demo import GAME, demo_checkpoints

    cfg = render_config(parse_args(["render", "--demo", "--trace", "--stack-forwards", "off", "--fps", "12",
                                    "--milestones", "0, 100"]))
    assert cfg.model_dir == tuple(demo_checkpoints()) and cfg.game == GAME
    assert cfg.trace is True and cfg.stack_forwards is False and cfg.fps == 12 and cfg.milestones == ("0", "100")
    for word, value in (("auto", None), ("on", True)):
        assert render_config(parse_args(["render", "--demo", "--stack-forwards", word])).stack_forwards is value
    assert render_config(parse_args(["render", "--model-dir", "a.zip"])).stack_forwards is None


def test_bench_outside_a_source_checkout_is_one_line_error(tmp_path: Path):
    """An installed package has no benchmarks/ folder beside it: say so, no traceback."""
    shutil.copytree(REPO / "gpurender", tmp_path / "gpurender",
                    ignore=shutil.ignore_patterns("*.zip", "__pycache__"))
    env = cli_env()
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "gpurender", "bench", "--quick"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "benchmarks/bench.py not found" in _one_line_error(proc)


def test_bench_runs_in_process_under_its_command_name():
    """benchmarks/bench.py is loaded as a module and handed its arguments (no sys.argv rewriting)."""
    proc = run_cli("bench", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: gpurender bench "), proc.stdout
