"""Checkpoint discovery: names -> labels and order, and the errors users get for bad folders."""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import pytest

from gpurender.errors import GpurenderError
from gpurender.milestones import find_milestones, parse_checkpoint_name, read_checkpoint


def _fake_checkpoint(path: Path) -> Path:
    """A zip with the two members SB3 archives always have (enough for discovery and read_checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", "{}")
        zf.writestr("policy.pth", b"\0" * 16)
    return path


@pytest.mark.parametrize(
    ("name", "label", "slug", "pct", "steps", "named"),
    [
        ("pct_50.zip", "50", "pct_50", 50.0, None, None),
        ("milestone_50.zip", "50", "pct_50", 50.0, None, None),
        ("step_12345_pct_50.zip", "50", "pct_50", 50.0, 12345, None),
        ("model_50pct.zip", "50", "pct_50", 50.0, None, None),
        ("checkpoint_50_percent.zip", "50", "pct_50", 50.0, None, None),
        ("pct_12.5.zip", "12.5", "pct_12.5", 12.5, None, None),
        ("rl_model_100000_steps.zip", "100000", "steps_100000", None, 100000, None),
        ("best_model.zip", "best_model", "best_model", None, None, "best_model"),
        ("final_model.zip", "final_model", "final_model", None, None, "final_model"),
        ("model.zip", "model", "model", None, None, "model"),
    ],
)
def test_parse_checkpoint_name(name, label, slug, pct, steps, named):
    m = parse_checkpoint_name(Path("/runs/x") / name)
    assert m is not None
    assert (m.label, m.slug, m.pct, m.steps, m.named) == (label, slug, pct, steps, named)
    assert m.path == Path("/runs/x") / name
    assert m.video_name == f"step_post_training_{slug}_analytics.mp4"


@pytest.mark.parametrize("name", ["notes.zip", "pct_50.pkl", "policy.pth", "replay_buffer.txt"])
def test_unrecognised_names(name):
    assert parse_checkpoint_name(Path(name)) is None


def test_display_text():
    assert parse_checkpoint_name(Path("pct_50.zip")).display == "50%"
    assert parse_checkpoint_name(Path("rl_model_100000_steps.zip")).display == "100,000 steps"
    assert parse_checkpoint_name(Path("best_model.zip")).display == "best_model"


def test_order_progress_then_roles():
    names = ["best_model.zip", "model.zip", "pct_100.zip", "rl_model_5000_steps.zip", "final_model.zip",
             "pct_10.zip", "rl_model_400_steps.zip", "pct_9.zip", "step_12345_pct_50.zip"]
    ordered = sorted(parse_checkpoint_name(Path(n)) for n in names)
    assert [m.label for m in ordered] == [
        "9", "10", "50", "100", "400", "5000", "final_model", "model", "best_model"]


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run folder as the original tool writes it: checkpoints in ``milestones/``, other files around."""
    run = tmp_path / "run"
    for pct, step in [(100, 8192), (10, 819), (50, 4096), (20, 1638), (5, 409)]:
        _fake_checkpoint(run / "milestones" / f"step_{step}_pct_{pct}.zip")
    (run / "milestones" / "notes.txt").write_text("not a checkpoint")
    (run / "config.yaml").write_text("env: Breakout\n")
    return run


def test_find_milestones_in_run_folder(run_folder: Path):
    found = find_milestones([run_folder])
    assert [m.label for m in found] == ["5", "10", "20", "50", "100"]
    assert [m.path.name for m in found][:2] == ["step_409_pct_5.zip", "step_819_pct_10.zip"]
    assert all(m.path.parent.name == "milestones" for m in found)


def test_find_milestones_given_milestones_folder_or_files(run_folder: Path):
    assert [m.label for m in find_milestones([run_folder / "milestones"])] == ["5", "10", "20", "50", "100"]
    files = [run_folder / "milestones" / "step_8192_pct_100.zip", run_folder / "milestones" / "step_409_pct_5.zip"]
    assert [m.label for m in find_milestones(files)] == ["5", "100"]


def test_find_milestones_select(run_folder: Path):
    found = find_milestones([run_folder], select=["10", "50"])
    assert [m.label for m in found] == ["10", "50"]
    assert [m.label for m in find_milestones([run_folder], select=["50%", " 100 "])] == ["50", "100"]
    assert [m.label for m in find_milestones([run_folder], select=["pct_20"])] == ["20"]


def test_select_nothing_matching(run_folder: Path):
    with pytest.raises(GpurenderError, match=r"none of the milestones.*have: 5, 10, 20, 50, 100"):
        find_milestones([run_folder], select=["33"])


def test_rl_zoo_folder(tmp_path: Path):
    for n in ["rl_model_200000_steps.zip", "rl_model_100000_steps.zip", "best_model.zip"]:
        _fake_checkpoint(tmp_path / n)
    assert [m.label for m in find_milestones([tmp_path])] == ["100000", "200000", "best_model"]


def test_missing_folder(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(GpurenderError, match="no such file") as info:
        find_milestones([missing])
    assert str(missing) in str(info.value)


def test_no_sources():
    with pytest.raises(GpurenderError, match="--model-dir"):
        find_milestones([])


def test_empty_folder(tmp_path: Path):
    (tmp_path / "milestones").mkdir()
    with pytest.raises(GpurenderError, match="no checkpoints") as info:
        find_milestones([tmp_path])
    assert str(tmp_path) in str(info.value)


def test_only_unrecognised_names(tmp_path: Path):
    _fake_checkpoint(tmp_path / "weights.zip")
    _fake_checkpoint(tmp_path / "milestones" / "backup.zip")
    with pytest.raises(GpurenderError, match="no checkpoint with a recognised name") as info:
        find_milestones([tmp_path])
    assert str(tmp_path) in str(info.value)
    assert "weights.zip" in str(info.value)


def test_duplicate_labels(tmp_path: Path):
    _fake_checkpoint(tmp_path / "pct_50.zip")
    _fake_checkpoint(tmp_path / "milestones" / "milestone_50.zip")
    with pytest.raises(GpurenderError, match="share the milestone label 'pct_50'") as info:
        find_milestones([tmp_path])
    assert str(tmp_path / "pct_50.zip") in str(info.value)
    assert str(tmp_path / "milestones" / "milestone_50.zip") in str(info.value)
    # the fix the message suggests works: pass only one of them
    assert [m.label for m in find_milestones([tmp_path / "pct_50.zip"])] == ["50"]


def test_read_checkpoint_accepts_sb3_layout(tmp_path: Path):
    data, policy = read_checkpoint(_fake_checkpoint(tmp_path / "pct_1.zip"))
    assert isinstance(data, str) and isinstance(policy, bytes) and policy


def test_read_checkpoint_random_bytes(tmp_path: Path):
    bad = tmp_path / "pct_50.zip"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(GpurenderError, match="not a readable checkpoint zip") as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_read_checkpoint_missing_file(tmp_path: Path):
    with pytest.raises(GpurenderError) as info:
        read_checkpoint(tmp_path / "gone.zip")
    assert str(tmp_path / "gone.zip") in str(info.value)


def test_read_checkpoint_without_policy(tmp_path: Path):
    path = tmp_path / "pct_50.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", "{}")
        zf.writestr("pytorch_variables.pth", b"")
    with pytest.raises(GpurenderError, match=r"policy\.pth") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_read_checkpoint_bad_crc(tmp_path: Path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("data", "{}")
        zf.writestr("policy.pth", b"A" * 256)
    raw = bytearray(buf.getvalue())
    at = raw.find(b"A" * 256)
    raw[at + 10] ^= 0xFF  # flip payload bytes, leave the directory intact
    path = tmp_path / "pct_50.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(GpurenderError, match="corrupt") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_read_checkpoint_truncated(tmp_path: Path):
    good = _fake_checkpoint(tmp_path / "good.zip").read_bytes()
    path = tmp_path / "pct_50.zip"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(GpurenderError, match=re.escape(str(path))):
        read_checkpoint(path)
