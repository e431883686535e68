"""``--trace``: every number a video's panel shows, one JSON line per frame, beside the video.

``<video stem>.trace.jsonl`` holds, for frame ``frame`` (0-based, the video's frame index):

* ``action`` — the executed action's index (its name is ``action_names[action]`` in the sidecar);
* ``probs`` — the policy's probabilities (PPO/A2C) or the softmax of the Q-values (DQN);
* ``q_values`` — the Q-values (DQN and QR-DQN only);
* ``value`` — V(s), or max Q for value-based agents;
* ``reward`` — the unclipped game score gained by the step that led to this frame;
* ``score`` — the game's score so far (the panel's "Ep Reward"), ``lives`` — lives left;
* ``levels`` — the displayed node levels in [0, 1], layer by layer as the sidecar's
  ``layers`` lists them (input, hidden layers, output).

Values are the float32 numbers the panel was drawn from, written as JSON numbers. Like the video,
the file is written under a hidden partial name and renamed only when complete.
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


class TraceWriter:
    """Writes one video's trace; :meth:`close` renames it into place, :meth:`abort` deletes it."""

    def __init__(self, video: Path) -> None:
        self.path = trace_path(video)
        self.partial = partial_path(self.path)
        self._file: IO[str] = self.partial.open("w", buffering=1 << 16)

    def write(self, t: int, out: StepOutputs, k: int, reward: float, score: float, lives: int) -> None:
        """Frame ``t`` of env row ``k`` of ``out``."""
        record = {"frame": t, "action": int(out.actions[k]), "probs": out.probs[k].tolist()}
        if out.q_values is not None:
            record["q_values"] = out.q_values[k].tolist()
        record.update(value=float(out.values[k]), reward=float(reward), score=float(score), lives=int(lives),
                      levels=np.asarray(out.levels[k]).tolist())
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)


def read_trace(path: Path) -> list[dict]:
    """A trace file's records, in frame order."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f]
