"""Composition of chunk transforms and the final conversion to torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


class Compose:
    """Apply transforms in order; each takes and returns a chunk (a dict of arrays)."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]):
        self.transforms = list(transforms)

    def __call__(self, chunk: Any) -> Any:
        for transform in self.transforms:
            chunk = transform(chunk)
        return chunk

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def to_torch(block: Mapping[str, np.ndarray], pin_memory: bool = False) -> dict[str, Any]:
    """numpy arrays -> torch tensors, zero-copy (torch.from_numpy); optionally in pinned memory."""
    import torch

    tensors = {}
    for key, value in block.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        tensors[key] = tensor.pin_memory() if pin_memory else tensor
    return tensors
