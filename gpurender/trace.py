"""``--trace``: every number a video's panel shows, one JSON line per frame, beside the video.

``<video stem>.trace.jsonl`` holds, for frame ``frame`` (0-based, the video's frame index):

* ``action`` — the executed action's index (its name is ``action_names[action]`` in the sidecar);
* ``probs`` — the policy's probabilities (PPO/A2C) or the softmax of the Q-values (DQN);
* ``q_values`` — the Q-values (DQN and QR-DQN only);
* ``value`` — V(s), or max Q for value-based agents;
* ``reward`` — the unclipped game score gained by the step that led to this frame;
* ``score`` — the game's score so far (the panel's "Ep Reward"), ``lives`` — lives left;
* ``levels`` — the displayed node levels, layer by layer as the sidecar's ``layers`` lists them
  (input, hidden layers, output): in [0, 1], or with ``--network-view attribution`` the signed
  attributions in [-1, 1] (output nodes: the probabilities).

Values are the float32 numbers the panel was drawn from, written as JSON numbers. Like the video,
the file is written under a hidden partial name and renamed only when complete.

With ``--saliency`` each line also has ``saliency_scale`` — [actor, critic], the running maxima
frame ``frame``'s maps were divided by — and ``<video stem>.saliency.npy`` holds the maps as drawn:
``np.load(path)`` is (frames, 2, 84, 84) float16, ``[t, 0]`` the actor's and ``[t, 1]`` the
critic's map of frame ``t`` in [0, 1] (84 x 84 observation pixels: the whole game screen); the raw
map is ``maps[t, i] * saliency_scale[i]`` (float16 rounding aside). Also partial, then renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import numpy as np

from gpurender.outputs import partial_path
from gpurender.protocol import StepOutputs


def trace_path(video: Path) -> Path:
    return video.with_suffix(".trace.jsonl")


def saliency_path(video: Path) -> Path:
    """Where ``--trace --saliency`` keeps a video's maps: ``<video stem>.saliency.npy``."""
    return video.with_suffix(".saliency.npy")


class TraceWriter:
    """Writes one video's trace; :meth:`close` renames it into place, :meth:`abort` deletes it.
    ``saliency_frames``: the video's frames when its saliency maps are kept too (0: none)."""

    def __init__(self, video: Path, saliency_frames: int = 0) -> None:
        self.path = trace_path(video)
        self.partial = partial_path(self.path)
        self._file: IO[str] = self.partial.open("w", buffering=1 << 16)
        self.maps_path = saliency_path(video) if saliency_frames else None
        self._maps_partial = partial_path(self.maps_path) if self.maps_path is not None else None
        self._maps: np.ndarray | None = None
        if self._maps_partial is not None:
            self._maps = np.lib.format.open_memmap(self._maps_partial, mode="w+", dtype=np.float16,
                                                   shape=(saliency_frames, 2, 84, 84))

    def write(self, t: int, out: StepOutputs, k: int, reward: float, score: float, lives: int,
              saliency: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Frame ``t`` of env row ``k`` of ``out``; ``saliency``: its (2, 84, 84) maps as drawn and
        the (2,) scales they were divided by."""
        record = {"frame": t, "action": int(out.actions[k]), "probs": out.probs[k].tolist()}
        if out.q_values is not None:
            record["q_values"] = out.q_values[k].tolist()
        record.update(value=float(out.values[k]), reward=float(reward), score=float(score), lives=int(lives),
                      levels=np.asarray(out.levels[k]).tolist())
        if saliency is not None and self._maps is not None:
            maps, scale = saliency
            self._maps[t] = maps
            record["saliency_scale"] = np.asarray(scale, np.float32).tolist()
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()
        if self._maps is not None:
            self._maps.flush()
            self._maps = None
            os.replace(self._maps_partial, self.maps_path)
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)
        if self._maps_partial is not None:
            self._maps = None
            self._maps_partial.unlink(missing_ok=True)


def read_trace(path: Path) -> list[dict]:
    """A trace file's records, in frame order."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f]
