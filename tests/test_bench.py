"""The benchmark suite as a user runs it (``gpurender bench``): both tools really render the bundled
checkpoints, the results files land where promised (outside the source tree for ``--quick``) with
the tables they promise, every stage runs on real frames, and a tool that fails is reported as
failed, not timed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import bench_stages  # noqa: E402

STAGES = {"env", "agent", "pack", "draw", "readback", "encode"}


@pytest.fixture(scope="module")
def quick_suite() -> tuple[dict, str, Path]:
    """``gpurender bench --quick`` with the least work that still runs both tools end to end."""
    cmd = [sys.executable, "-m", "gpurender", "bench", "--quick", "--name", "t", "--skip-stages", "--skip-memory",
           "--skip-warmup", "--milestones", "1", "--seconds", "0.2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wrote = re.findall(r"^wrote (\S+)\.md, ", proc.stdout, re.MULTILINE)
    assert len(wrote) == 1, proc.stdout[-2000:]
    stem = Path(wrote[0])
    yield json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".md").read_text(), stem
    shutil.rmtree(stem.parent)


def test_quick_results_go_outside_the_source_tree(quick_suite: tuple[dict, str, Path]):
    _, _, stem = quick_suite
    assert stem.name == "quick-t"
    assert stem.parent.is_relative_to(tempfile.gettempdir()) and not stem.is_relative_to(ROOT)
    assert stem.with_suffix(".md").is_file() and stem.with_suffix(".json").is_file()
    assert not list((ROOT / "benchmarks" / "results").glob("quick-t.*"))
    untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "benchmarks/results"],
                               cwd=ROOT, capture_output=True, text=True).stdout
    assert "quick-t" not in untracked


def test_both_tools_render_every_frame(quick_suite: tuple[dict, str, Path]):
    result, md, _ = quick_suite
    runs = {r["tool"]: r for r in result["end_to_end"]}
    assert set(runs) == {"gpurender", "baseline"}
    for r in runs.values():
        assert r["ok"] and r["frames"] == 6 and r["inner"]["frames"] == 6, r
    assert "| gpurender | 1 | 0.2 | 6 |" in md and "| baseline | 1 | 0.2 | 6 |" in md
    assert "## Against the baseline" in md and len(result["ratios"]) == 1


def test_cpu_is_accounted_by_process_and_thread(quick_suite: tuple[dict, str, Path]):
    result, md, _ = quick_suite
    runs = {r["tool"]: r for r in result["end_to_end"]}
    g = runs["gpurender"]
    # gpurender's work is split between its drawing process and the simulation process, and the
    # sampled threads cannot add up to more than the kernel's exact total
    assert g["cpu_by_role"]["main process · main thread"] > 0
    assert g["cpu_by_role"]["worker process · main thread"] > 0
    for r in runs.values():
        assert r["cpu_s"] > 0
        assert sum(r["cpu_by_role"].values()) <= r["cpu_s"] * 1.05 + 0.1
    assert "## CPU by process and thread" in md and "| gpurender | 1 | worker process · main thread |" in md


def test_every_stage_runs_on_real_frames(tmp_path: Path):
    """Each stage of ``run_stages`` on the frames it benchmarks (Breakout played by an agent, drawn
    by the renderer), with the least work per repetition: rows with every repetition timed."""
    import numpy as np
    import torch

    from gpurender.encode import EncodeSettings

    rows = [bench_stages.bench_env("envpool", 1, 5)]
    with bench_stages.stage_setup(torch.device("cpu"), quick=True) as (agent, r, clip):
        assert clip.yuv is not None and clip.yuv.shape == (len(clip.values), 810, 960)
        assert not np.array_equal(clip.yuv[0], clip.yuv[-1]), "the benchmarked frames are a still image"
        rows += [bench_stages.bench_agent(agent, 1, 1), bench_stages.bench_pack(clip, 1, 1),
                 bench_stages.bench_draw(r, clip, 1, 1), bench_stages.bench_draw(r, clip, 1, 1, game=False)]
        rows += [bench_stages.bench_readback(r, clip, kind, 1, 1)
                 for kind in ("yuv", "rgb", "rgb+swscale", "panel+opencv")]
        rows.append(bench_stages.bench_encode(clip, "libx264", EncodeSettings(), 1, 2, tmp_path))
    assert {row.stage for row in rows} == STAGES
    for row in rows:
        assert row.per_s > 0 and row.cpu_ms_per_item is not None and row.cpu_ms_per_item >= 0, row
        assert len(row.reps_s) == len(row.reps_cpu_s) == bench_stages.REPS, row
    table = bench_stages.stage_table(rows)
    for row in rows:
        assert f"| {row.stage} | {row.backend} | 1 |" in table


def test_a_failing_tool_is_reported_not_timed(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """gpurender given a run folder with no checkpoints: the run is marked failed, with the tool's
    own message, and the table says so."""
    run = tmp_path / "run"
    run.mkdir()
    args = bench.parse_args(["--device", "cpu", "--encoder", "x264"])
    r = bench.run_tool("gpurender", run, 1, 0.2, tmp_path, args)
    assert not r.ok
    out = capsys.readouterr().out
    assert re.search(r"!! gpurender 1x6 failed \(exit [1-9]", out) and "no checkpoints" in out, out
    assert "| gpurender (FAILED) | 1 |" in bench.e2e_table([r])


def test_help_and_results_folders(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--help"], prog="gpurender bench")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gpurender bench ") and "--results-dir DIR" in out
    assert bench.results_folder(False, None) == ROOT / "benchmarks" / "results"  # full runs: committed
    quick = [bench.results_folder(True, None) for _ in range(2)]
    try:
        assert quick[0] != quick[1] and all(q.is_dir() and q.is_relative_to(tempfile.gettempdir()) for q in quick)
    finally:
        for q in quick:
            q.rmdir()
