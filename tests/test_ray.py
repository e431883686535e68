"""Renders as tasks on a real Ray cluster (``--ray``): a local one started by the render, and an
existing one (``ray start --head``). Every cluster runs inside a private network namespace that
has only the loopback (``unshare -n``, root): outside one, Ray probes a public address and binds
the machine's interface, and these machines may send nothing but loopback traffic."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from _video import REPO, cli_env, decode, message_lines, run_cli

from gpurender.trace import saliency_path

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'gpurender[ray]'")


def _netns_reason() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot make a network namespace: {probe.stderr.strip()}"


pytestmark = pytest.mark.skipif(_netns_reason() is not None, reason=str(_netns_reason()))

DEMO = ("--demo", "--milestones", "0,100", "--device", "cpu", "--quiet")


def _env() -> dict[str, str]:
    env = cli_env()
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))  # the `ray` command
    return env


def _in_netns(script: str) -> list[str]:
    """A bash ``script`` run in a new network namespace with only the loopback, up."""
    return ["unshare", "-n", "bash", "-c", f"ip link set lo up && {script}"]


def _frames(folder: Path) -> dict[str, list]:
    return {p.name: decode(p).frames for p in sorted(folder.glob("*.mp4"))}


def _assert_same_videos(got: Path, want: Path) -> None:
    a, b = _frames(got), _frames(want)
    assert sorted(a) == sorted(b) and a, (sorted(a), sorted(b))
    for name, frames in b.items():
        assert len(a[name]) == len(frames)
        assert all((x == y).all() for x, y in zip(a[name], frames, strict=True)), f"{name} differs"
    hidden = [p.name for p in got.iterdir() if p.name.startswith(".")]
    assert hidden == [], f"partial or lock files left behind: {hidden}"


def _task_workers() -> list[psutil.Process]:
    """Ray worker processes running a render task (Ray titles them after the task)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::gpurender shard"):
            out.append(p)
    return out


def test_local_cluster_retries_a_killed_task_and_writes_the_one_pipeline_videos(tmp_path: Path):
    want, got = tmp_path / "one-pipeline", tmp_path / "ray"
    ref = run_cli("render", *DEMO, "--clip-seconds", "3", "--output-dir", want)
    assert ref.returncode == 0, ref.stderr
    started = time.time()
    proc = subprocess.Popen(
        _in_netns(f"exec {sys.executable} -m gpurender render {' '.join(DEMO)} --clip-seconds 3 --ray --workers 2 "
                  f"--output-dir {got}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    killed = None
    try:
        deadline = time.monotonic() + 180
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            # a task is drawing once its partial videos exist in its node-local folder
            drawing = [d for d in Path("/tmp").glob("gpurender-task-*") if d.stat().st_mtime >= started
                       and any(".partial" in p.name for p in (d / "out").glob(".*"))]
            workers = _task_workers()
            if drawing and workers:
                killed = workers[0]
                killed.kill()
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no render task was seen running"
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "60 frames" not in stdout and "180 frames in" in stdout, stdout  # both videos, once each
    _assert_same_videos(got, want)


def test_existing_cluster_renders_and_ctrl_c_cancels_its_tasks(tmp_path: Path):
    """``ray start --head``, then ``gpurender render --ray ADDRESS``: the videos come back to the
    driver; a second, long render interrupted mid-way leaves nothing in its folder."""
    done, cancelled, want = tmp_path / "done", tmp_path / "cancelled", tmp_path / "one-pipeline"
    ref = run_cli("render", *DEMO, "--clip-seconds", "1", "--output-dir", want)
    assert ref.returncode == 0, ref.stderr
    render = f"{sys.executable} -m gpurender render {' '.join(DEMO)} --ray 127.0.0.1:6399"
    # ray 2.60 starts clusters with token authentication; a driver given an explicit address
    # loads the token (~/.ray/auth_token) only in token mode
    script = f"""
export RAY_AUTH_MODE=token
set -m  # jobs in their own process groups: a background job of a script would ignore SIGINT
ray start --head --port=6399 --num-cpus=2 --include-dashboard=false --disable-usage-stats >/dev/null 2>&1 || exit 90
trap 'ray stop --force >/dev/null 2>&1' EXIT
{render} --clip-seconds 1 --output-dir {done}; echo "rc1=$?"
touch {tmp_path}/started
{render} --clip-seconds 60 --output-dir {cancelled} & pid=$!
for i in $(seq 1200); do  # until its task is drawing
    [ -n "$(find /tmp -maxdepth 3 -path '/tmp/gpurender-task-*/out/.*.partial' -newer {tmp_path}/started)" ] && break
    sleep 0.1
done
kill -INT $pid; wait $pid; echo "rc2=$?"
"""
    proc = subprocess.run(_in_netns(script), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rc1=0" in proc.stdout, proc.stdout + proc.stderr
    _assert_same_videos(done, want)
    assert len(list(done.glob("*.json"))) == 2  # the driver wrote the sidecars
    assert "rc2=130" in proc.stdout, proc.stdout + proc.stderr
    assert "gpurender: interrupted" in "\n".join(message_lines(proc.stderr))
    assert [p.name for p in cancelled.iterdir()] == [], "a cancelled render left files behind"


def test_saliency_maps_come_back_from_the_tasks(tmp_path: Path):
    """``--trace --saliency``: each video's ``.saliency.npy`` is written by the driver, equal to
    the one a local render writes."""
    want, got = tmp_path / "one-pipeline", tmp_path / "ray"
    flags = "--demo --milestones 100 --device cpu --quiet --clip-seconds 1 --trace --saliency gradient"
    ref = run_cli("render", *flags.split(), "--workers", "1", "--output-dir", want)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.run(_in_netns(f"exec {sys.executable} -m gpurender render {flags} --ray --output-dir {got}"),
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (video,) = sorted(want.glob("*.mp4"))
    maps = np.load(saliency_path(got / video.name))
    assert maps.shape == (30, 2, 84, 84)
    assert np.array_equal(maps, np.load(saliency_path(video)))
    hidden = [p.name for p in got.iterdir() if p.name.startswith(".")]
    assert hidden == [], f"partial or lock files left behind: {hidden}"
