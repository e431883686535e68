"""Configs check themselves when made: every bad number is a one-line error naming its flag (or,
read from the original tool's YAML, its file and key), the same whichever way the config is made."""

from __future__ import annotations

import pickle
import re
from dataclasses import replace
from pathlib import Path

import pytest

from gpurender.config import ConfigError, PreviewConfig, RenderConfig, merge, read_yaml_config
from gpurender.errors import GpurenderError

BAD_RENDER = [  # field, value, what the message must say
    ("fps", 0, "--fps must be a positive whole number, got 0"),
    ("fps", -30, "--fps must be a positive whole number"),
    ("fps", 29.97, "--fps must be a positive whole number, got 29.97"),
    ("fps", True, "--fps must be a positive whole number"),
    ("fps", "30", "--fps must be a positive whole number, got '30'"),
    ("clip_seconds", -3, "--clip-seconds must be a positive, finite number of seconds, got -3"),
    ("clip_seconds", 0, "--clip-seconds must be a positive"),
    ("clip_seconds", float("inf"), "--clip-seconds must be a positive, finite"),
    ("clip_seconds", float("nan"), "--clip-seconds must be a positive, finite"),
    ("clip_seconds", 0.01, "--clip-seconds must last at least one frame at --fps 30, got 0.01"),
    ("envs_per_milestone", 0, "--envs-per-milestone must be at least 1, got 0"),
    ("envs_per_milestone", -2, "--envs-per-milestone must be at least 1, got -2"),
    ("crf", 99, "--crf must be a whole number in 0..51 (libx264's range), got 99"),
    ("crf", -1, "--crf must be a whole number in 0..51"),
    ("preset", "bogus", "--preset must be one of ultrafast, superfast, veryfast, faster, fast, medium, slow, "
     "slower, veryslow, placebo, got 'bogus'"),
    ("encoder", "h265", "--encoder must be one of auto, nvenc, x264, got 'h265'"),
    ("backend", "retro", "--backend must be one of envpool, gym, got 'retro'"),
    ("max_tiles", 0, "--max-tiles must be at least 1, got 0"),
    ("seed", -1, "--seed must be a whole number >= 0, got -1"),
    ("stack_forwards", "on", "--stack-forwards must be None (auto), True or False, got 'on'"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_RENDER, ids=[f"{f}={v!r}" for f, v, _ in BAD_RENDER])
def test_render_config_rejects_bad_values_naming_the_flag(field: str, value: object, message: str):
    with pytest.raises(ConfigError) as info:
        RenderConfig(**{field: value})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert isinstance(info.value, GpurenderError)  # the CLI prints it on one line, exit code 2
    with pytest.raises(ConfigError, match="^" + re.escape(message.split(",")[0])):  # replace() and merge() check too
        replace(RenderConfig(), **{field: value})
    with pytest.raises(ConfigError):
        merge(RenderConfig(), {field: value})


def test_render_config_normalises_what_it_is_given():
    cfg = RenderConfig(model_dir="runs/ppo", output_dir="videos/out", fps=15.0, clip_seconds=2, milestones=[10, 50])
    assert cfg.model_dir == (Path("runs/ppo"),)  # one path, not its characters
    assert cfg.output_dir == Path("videos/out")
    assert cfg.fps == 15 and isinstance(cfg.fps, int)
    assert cfg.clip_seconds == 2.0 and isinstance(cfg.clip_seconds, float)
    assert cfg.milestones == ("10", "50")
    assert cfg.frames == 30
    assert RenderConfig(model_dir=["a.zip", Path("b.zip")]).model_dir == (Path("a.zip"), Path("b.zip"))
    assert RenderConfig(clip_seconds=0.1, fps=10).frames == 1
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # it travels to the simulation process
    for crf in (0, 51):
        assert RenderConfig(crf=crf).crf == crf


@pytest.mark.parametrize(("field", "value", "message"), [
    ("speed", 0, "--speed must be a positive, finite number, got 0"),
    ("speed", -1.5, "--speed must be a positive"),
    ("speed", float("inf"), "--speed must be a positive, finite"),
    ("max_frames", -1, "--max-frames must be a whole number >= 0, got -1"),
    ("encoder", "h265", "--encoder must be one of auto, nvenc, x264"),
])
def test_preview_config_rejects_bad_values(field: str, value: object, message: str):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        PreviewConfig(**{field: value})
    pcfg = PreviewConfig(speed=2, output_dir="shots")
    assert pcfg.speed == 2.0 and pcfg.output_dir == Path("shots") and pcfg.max_frames == 0


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_config_is_read_and_checked(tmp_path: Path):
    good = _yaml(tmp_path, "game:\n  env_id: PongNoFrameskip-v4\ntrain:\n  algo: qr-dqn\n"
                           "recording:\n  fps: 15\n  milestone_clip_seconds: 2.5\n  milestones_pct: [10, 50.0, 100]\n"
                           "other:\n  ignored: true\n")
    assert read_yaml_config(good) == {"game": "PongNoFrameskip-v4", "algo": "QRDQN", "fps": 15, "clip_seconds": 2.5,
                                      "milestones": ("10", "50", "100")}


@pytest.mark.parametrize(("text", "message"), [
    ("recording:\n  fps: 0\n", "recording.fps must be a positive whole number, got 0"),
    ("recording:\n  fps: 29.97\n", "recording.fps must be a positive whole number, got 29.97"),
    ("recording:\n  fps: thirty\n", "recording.fps must be a positive whole number, got 'thirty'"),
    ("recording:\n  milestone_clip_seconds: -3\n", "recording.milestone_clip_seconds must be a positive, finite"),
    ("recording:\n  milestones_pct: [ten]\n", "recording.milestones_pct must be a list of percentages"),
    ("recording: [1, 2]\n", None),  # not a mapping: ignored like any unknown layout
])
def test_bad_yaml_values_name_the_file_and_key(tmp_path: Path, text: str, message: str | None):
    path = _yaml(tmp_path, text)
    if message is None:
        assert read_yaml_config(path) == {}
        return
    with pytest.raises(GpurenderError) as info:
        read_yaml_config(path)
    assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)
