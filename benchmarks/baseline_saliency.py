"""Baseline: perturbation saliency the way the paper's public code computes it, so that gpurender's
batched saliency can be timed against it on the same machine and the same observations.

Greydanus et al., "Visualizing and Understanding Atari Agents" (ICML 2018), reference code
``greydanus/visualize_atari`` (MIT): ``saliency.py`` (``get_mask``, ``occlude``,
``run_through_model``, ``score_frame``) driven frame by frame by ``make_movie.py``. This module
keeps that structure and cost and changes only what an SB3 agent needs:

* the input is SB3's 4x84x84 frame stack (already cropped, grey and resized by the env
  wrappers) instead of the paper's one 80x80 frame, so ``prepro`` is a float copy and the blur
  and the mask are applied to each of the four frames;
* the model is an SB3 checkpoint loaded with ``PPO.load`` / ``A2C.load`` / ``DQN.load``; its
  forward returns ``(value, logits)`` as the paper's ``NNPolicy`` returns ``(critic, actor)``
  (DQN: ``(max_a Q, Q)``), through SB3's own ``extract_features`` (which scales by 1/255, as
  the paper's ``prepro`` does) — there is no LSTM state to carry;
* ``scipy.ndimage.gaussian_filter`` (mode ``reflect``, 4 sigma) is OpenCV's ``GaussianBlur`` with the
  same kernel and ``BORDER_REFLECT`` (scipy is not a gpurender dependency), and
  ``scipy.misc.imresize`` (removed from SciPy) is its 8-bit rescale plus a bilinear resize;
* the centres are ``range(0, 84, 5)``: 17x17, the same 289 masks gpurender scores.

As in the paper: for each frame, ``score_frame`` runs once for the actor and once for the
critic; each run makes one unperturbed batch-1 forward and, for each of the 289 centres, builds
the mask (a blurred disc), blurs the whole observation again, blends, and makes one batch-1
forward. 2 x 290 forwards per frame. :func:`heat_overlay` draws both maps on the game screen as
``make_movie`` does (``saliency_on_atari_frame``: actor in blue, critic in red).

    python benchmarks/baseline_saliency.py --checkpoint gpurender/demo/step_300000_pct_100.zip --frames 3
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

SIZE = 84


def gaussian_filter(img: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, sigma)`` for a 2-D image, or for each frame of a stack
    (mode ``reflect``, truncated at 4 sigma)."""
    k = 2 * int(4.0 * sigma + 0.5) + 1
    if img.ndim == 3:
        return np.stack([gaussian_filter(f, sigma) for f in img])
    return cv2.GaussianBlur(img, (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def imresize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``scipy.misc.imresize(img, size, interp="bilinear")``: byte-scale to 0..255, then resize."""
    lo, hi = float(img.min()), float(img.max())
    scaled = np.zeros(img.shape, np.uint8) if hi == lo else ((img - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)
    return cv2.resize(scaled, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def prepro(obs: np.ndarray) -> np.ndarray:
    """The stack as floats (SB3's policy divides by 255 itself)."""
    return obs.astype(np.float32)


def searchlight(img: np.ndarray, mask: np.ndarray) -> np.ndarray:  # choose an area NOT to blur
    return img * mask + gaussian_filter(img, sigma=3) * (1 - mask)


def occlude(img: np.ndarray, mask: np.ndarray) -> np.ndarray:  # choose an area to blur
    return img * (1 - mask) + gaussian_filter(img, sigma=3) * mask


def get_mask(center: tuple[int, int], size: tuple[int, int], r: float) -> np.ndarray:
    """A disc of pixels (radius 1) blurred by a Gaussian of sigma ``r``, peak 1."""
    y, x = np.ogrid[-center[0]:size[0] - center[0], -center[1]:size[1] - center[1]]
    keep = x * x + y * y <= 1
    mask = np.zeros(size, np.float32)
    mask[keep] = 1
    mask = gaussian_filter(mask, sigma=r)
    return mask / mask.max()


class PaperModel:
    """An SB3 checkpoint whose forward returns ``(critic, actor)`` like the paper's ``NNPolicy``."""

    def __init__(self, path: Path) -> None:
        from stable_baselines3 import A2C, DQN, PPO

        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
        module = data.get("policy_class", {}).get("__module__", "")
        if ".dqn." in module:
            cls = DQN
        else:
            cls = PPO if "clip_range" in data else A2C
        self.algo = cls.__name__
        self.policy = cls.load(path, device="cpu").policy

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.policy
        if self.algo == "DQN":
            q = p.q_net(obs)
            return q.max(dim=1).values, q
        features = p.extract_features(obs)
        if p.share_features_extractor:
            latent_pi, latent_vf = p.mlp_extractor(features)
        else:
            latent_pi = p.mlp_extractor.forward_actor(features[0])
            latent_vf = p.mlp_extractor.forward_critic(features[1])
        return p.value_net(latent_vf), p.action_net(latent_pi)


def run_through_model(model: PaperModel, obs: np.ndarray, interp_func=None, mask: np.ndarray | None = None,
                      mode: str = "actor") -> torch.Tensor:
    if mask is None:
        im = prepro(obs)
    else:
        assert interp_func is not None, "interp func cannot be none"
        im = interp_func(prepro(obs), mask)  # perturb input I -> I'
    state = torch.as_tensor(im).unsqueeze(0)
    with torch.no_grad():
        out = model(state)
    return out[0] if mode == "critic" else out[1]


def score_frame(model: PaperModel, obs: np.ndarray, r: float, d: int, interp_func, mode: str = "actor") -> np.ndarray:
    """(84, 84) saliency of one observation: one batch-1 forward per mask."""
    assert mode in ("actor", "critic"), 'mode must be either "actor" or "critic"'
    big_l = run_through_model(model, obs, interp_func, mask=None, mode=mode)
    scores = np.zeros((int(SIZE / d) + 1, int(SIZE / d) + 1))  # saliency scores S(t,i,j)
    for i in range(0, SIZE, d):
        for j in range(0, SIZE, d):
            mask = get_mask(center=(i, j), size=(SIZE, SIZE), r=r)
            small_l = run_through_model(model, obs, interp_func, mask=mask, mode=mode)
            scores[i // d, j // d] = float((big_l - small_l).pow(2).sum().mul_(0.5))
    pmax = scores.max()
    resized = imresize_bilinear(scores, (SIZE, SIZE)).astype(np.float32)
    return pmax * resized / max(float(resized.max()), 1e-30)


def saliency_frame(model: PaperModel, obs: np.ndarray, radius: float = 5,
                   density: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The paper's per-frame work in ``make_movie``: the actor map, then the critic map."""
    actor = score_frame(model, obs, radius, density, interp_func=occlude, mode="actor")
    critic = score_frame(model, obs, radius, density, interp_func=occlude, mode="critic")
    return actor, critic


ACTOR_FF, CRITIC_FF = 300, 600
"""The paper's fudge factors for Breakout (``get_env_meta``): what a map's peak is multiplied by
before it is added to a colour channel (tuned for the paper's agents, not SB3's). Used for any
game: the overlay's cost does not depend on them, and the demo may play another game."""


def saliency_on_atari_frame(saliency: np.ndarray, atari: np.ndarray, fudge_factor: float,
                            channel: int = 2) -> np.ndarray:
    """The paper's overlay: the map resized bilinearly (``imresize``, 8-bit) onto the screen,
    shifted to 0, scaled to ``fudge_factor`` x its peak and added to one colour channel, clipped.
    SB3's observation is the whole 210x160 screen resized, so the map covers the whole screen (the
    paper's covered rows 35-195, its 80x80 crop)."""
    pmax = float(saliency.max())
    s = imresize_bilinear(saliency, atari.shape[:2]).astype(np.float32)
    s -= s.min()
    s = fudge_factor * pmax * s / max(float(s.max()), 1e-30)
    image = atari.astype(np.uint16)
    image[..., channel] += s.astype(np.uint16)
    return image.clip(1, 255).astype(np.uint8)


def heat_overlay(model: PaperModel) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``overlay(screen, obs)`` as ``make_movie`` draws a frame: the actor's and the critic's maps of
    the observation (``obs``: SB3's (1, 84, 84, 4) stack), the actor's added to the blue channel
    and the critic's to the red one."""

    def overlay(screen: np.ndarray, obs: np.ndarray) -> np.ndarray:
        actor, critic = saliency_frame(model, np.ascontiguousarray(np.transpose(obs[0], (2, 0, 1))))
        frame = saliency_on_atari_frame(actor, screen, ACTOR_FF, channel=2)
        return saliency_on_atari_frame(critic, frame, CRITIC_FF, channel=0)

    return overlay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=3, help="observations to score (random stacks)")
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenCV threads (default: their choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    model = PaperModel(args.checkpoint)
    obs = np.random.default_rng(0).integers(0, 256, (args.frames, 4, SIZE, SIZE), dtype=np.uint8)
    start = time.perf_counter()
    for o in obs:
        saliency_frame(model, o)
    wall = time.perf_counter() - start
    print(f"baseline saliency: {args.frames / wall:.2f} frames/s ({model.algo}, "
          f"{torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()
