"""Shared fixtures: real, small SB3 checkpoints built on the fly (no downloads), and golden images.

Markers (slow, gpu, nvenc, display) are declared in pyproject.toml. ``--update-goldens`` rewrites
the golden images instead of comparing with them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="write this run's frames to tests/golden/ instead of comparing with them")


def compare_golden(image: np.ndarray, name: str, update: bool = False, mean_tol: float = 1.0,
                   p99_tol: float = 8.0, moved_tol: int = 100, folder: Path = GOLDEN) -> None:
    """Compare an RGB frame with ``<folder>/<name>.png`` (``update``: write it there first).

    Passes when the mean absolute difference is under ``mean_tol``, its 99th percentile under
    ``p99_tol`` and at most ``moved_tol`` pixels differ by more than 32 levels: rasteriser noise
    and small colour changes pass, anything that moves (a text line shifted by a pixel) does not.
    On failure the frame and an image of golden | frame | amplified difference are written to
    ``<folder>/_diff/``; on success (or update) this name's old diff images are removed.
    """
    path, diff_dir = folder / f"{name}.png", folder / "_diff"
    stale = (diff_dir / f"{name}.png", diff_dir / f"{name}_golden_frame_diff.png")
    if update:
        Image.fromarray(image).save(path)
    if not path.is_file():
        raise AssertionError(f"no golden image {path}; create it with pytest --update-goldens")
    ref = np.asarray(Image.open(path).convert("RGB"))
    assert ref.shape == image.shape, f"{name}: golden is {ref.shape}, frame is {image.shape}"
    diff = np.abs(image.astype(np.int16) - ref.astype(np.int16))
    mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
    moved = int(np.count_nonzero(diff.max(axis=2) > 32))
    if mean < mean_tol and p99 < p99_tol and moved <= moved_tol:
        for p in stale:
            p.unlink(missing_ok=True)
        return
    diff_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(stale[0])
    amplified = np.repeat(np.clip(diff.max(axis=2) * 8, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(np.concatenate([ref, image, amplified], axis=1)).save(stale[1])
    raise AssertionError(
        f"{name}: differs from {path}: mean abs diff {mean:.3f} (< {mean_tol}), 99th percentile {p99:.1f} "
        f"(< {p99_tol}), {moved} pixels off by > 32 (<= {moved_tol}); see {stale[1]}, and if the change is "
        "intended rerun with pytest --update-goldens")


@pytest.fixture
def check_golden(request: pytest.FixtureRequest) -> Callable[[np.ndarray, str], None]:
    """``check_golden(rgb, name)``: :func:`compare_golden`, updating under ``--update-goldens``."""
    update = bool(request.config.getoption("--update-goldens"))
    return lambda image, name: compare_golden(image, name, update)


def _atari_venv():
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def atari_venv():
    """Breakout as SB3 trains on it; the models below take their spaces from it."""
    venv = _atari_venv()
    yield venv
    venv.close()


def _save(model, path: Path) -> Path:
    model.save(path)
    return path


@pytest.fixture(scope="session")
def ppo_checkpoint(checkpoint_dir: Path, atari_venv) -> Path:
    from stable_baselines3 import PPO

    return _save(PPO("CnnPolicy", atari_venv, n_steps=8, batch_size=8, seed=1, device="cpu"),
                 checkpoint_dir / "ppo_breakout.zip")


@pytest.fixture(scope="session")
def a2c_checkpoint(checkpoint_dir: Path, atari_venv) -> Path:
    from stable_baselines3 import A2C

    return _save(A2C("CnnPolicy", atari_venv, seed=2, device="cpu"), checkpoint_dir / "a2c_breakout.zip")


@pytest.fixture(scope="session")
def dqn_checkpoint(checkpoint_dir: Path, atari_venv) -> Path:
    from stable_baselines3 import DQN

    return _save(DQN("CnnPolicy", atari_venv, buffer_size=100, learning_starts=0, seed=3, device="cpu"),
                 checkpoint_dir / "dqn_breakout.zip")


@pytest.fixture(scope="session")
def ppo_separate_checkpoint(checkpoint_dir: Path, atari_venv) -> Path:
    """PPO whose actor and critic have their own CNN and one 64-unit dense layer each."""
    from stable_baselines3 import PPO

    kwargs = dict(net_arch=dict(pi=[64], vf=[64]), share_features_extractor=False)
    return _save(PPO("CnnPolicy", atari_venv, n_steps=8, batch_size=8, seed=4, device="cpu", policy_kwargs=kwargs),
                 checkpoint_dir / "ppo_separate_breakout.zip")


@pytest.fixture(scope="session")
def qrdqn_checkpoint(checkpoint_dir: Path, atari_venv) -> Path:
    sb3_contrib = pytest.importorskip("sb3_contrib")
    return _save(sb3_contrib.QRDQN("CnnPolicy", atari_venv, buffer_size=100, learning_starts=0, seed=5, device="cpu"),
                 checkpoint_dir / "qrdqn_breakout.zip")


@pytest.fixture(scope="session")
def cartpole_checkpoint(checkpoint_dir: Path) -> Path:
    """Discrete actions but vector observations: not an Atari image agent."""
    from stable_baselines3 import PPO

    return _save(PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, seed=6, device="cpu"),
                 checkpoint_dir / "ppo_cartpole.zip")


@pytest.fixture(scope="session")
def pendulum_checkpoint(checkpoint_dir: Path) -> Path:
    """Continuous actions: not a discrete Atari action set."""
    from stable_baselines3 import PPO

    return _save(PPO("MlpPolicy", "Pendulum-v1", n_steps=8, batch_size=8, seed=7, device="cpu"),
                 checkpoint_dir / "ppo_pendulum.zip")


@pytest.fixture(scope="session")
def image_checkpoints(ppo_checkpoint, a2c_checkpoint, dqn_checkpoint, ppo_separate_checkpoint,
                      qrdqn_checkpoint) -> dict[str, Path]:
    return {"ppo": ppo_checkpoint, "a2c": a2c_checkpoint, "dqn": dqn_checkpoint,
            "ppo_separate": ppo_separate_checkpoint, "qrdqn": qrdqn_checkpoint}


@pytest.fixture(scope="session")
def image_continuous_checkpoint(checkpoint_dir: Path) -> Path:
    """Atari-shaped image observations but continuous actions: not a discrete Atari action set."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import PPO

    class ImageBoxEnv(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
        action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

        def reset(self, *, seed=None, options=None):
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    return _save(PPO("CnnPolicy", ImageBoxEnv(), n_steps=8, batch_size=8, seed=8, device="cpu"),
                 checkpoint_dir / "ppo_image_continuous.zip")


@pytest.fixture(scope="session")
def demo_stacks() -> np.ndarray:
    """(3, 4, 84, 84) uint8: real frame stacks of the demo's game (SB3's wrappers) 20, 30 and 40
    steps into a game the trained (100 %) demo milestone plays."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from gpurender.agents import Agent
    from gpurender.demo import GAME, demo_checkpoints
    from gpurender.games import resolve_game

    gym.register_envs(ale_py)
    venv = VecFrameStack(make_atari_env(resolve_game(GAME).gym_id, n_envs=1, seed=0), n_stack=4)
    agent, kept, o = Agent(demo_checkpoints()[-1], device="cpu"), [], venv.reset()
    for t in range(41):
        x = np.ascontiguousarray(np.transpose(o, (0, 3, 1, 2)))
        if t in (20, 30, 40):
            kept.append(x[0])
        o, *_ = venv.step(agent.act(x).actions.numpy())
    venv.close()
    return np.stack(kept)
