"""What the panel knows of an agent's network, without torch: the main (drawing) process imports
only this, so it starts without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_NODES = 8
"""Displayed nodes per hidden layer; each stands for an equal, contiguous group of units."""
MAX_ACTIONS = 18


@dataclass(frozen=True)
class LayerInfo:
    """One column of the network diagram, read from the loaded module."""

    name: str
    """Input, Conv1, Conv2, Dense1, ..., Output."""
    kind: str
    """input | conv | dense | output."""
    shape: tuple[int, ...]
    """Output shape of the layer for one observation, e.g. (32, 20, 20) or (512,)."""
    nodes: int
    """How many nodes the diagram draws for it."""

    @property
    def units(self) -> int:
        return self.shape[0]

    @property
    def shape_text(self) -> str:
        if self.kind == "input":
            return "x".join(map(str, self.shape))
        if len(self.shape) == 3:
            return f"{self.shape[0]}@{self.shape[1]}x{self.shape[2]}"
        return str(self.shape[0])


@dataclass(frozen=True)
class AgentInfo:
    """What the panel needs to know about an agent, without the model (cheap to send between
    processes)."""

    algo: str
    n_actions: int
    learning_rate: float
    layers: tuple[LayerInfo, ...]
    edge_weights: tuple[np.ndarray, ...]

    @property
    def node_counts(self) -> list[int]:
        return [layer.nodes for layer in self.layers]
