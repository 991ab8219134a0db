"""Chunk -> flat layout: features (n, F) float32 and mask (n, F) bool, in a fixed column order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from rootml.transforms.pad import PadIndex, jagged_offsets


@dataclass(frozen=True)
class Column:
    """One branch in the feature matrix: `width` columns starting at `start`.

    kind: "flat" (width 1), "fixed" (a fixed-size array, width = its size) or "jagged"
    (width = the pad length).
    """

    branch: str
    kind: str
    width: int
    start: int = 0

    def names(self) -> list[str]:
        if self.kind == "flat":
            return [self.branch]
        return [f"{self.branch}[{i}]" for i in range(self.width)]


def make_columns(branches: Sequence[tuple[str, str, int]]) -> list[Column]:
    """Columns from (branch, kind, width) in order, with their start offsets filled in."""
    columns, start = [], 0
    for branch, kind, width in branches:
        columns.append(Column(branch, kind, int(width), start))
        start += int(width)
    return columns


class FlatLayout:
    """Turn a chunk (branch -> array of n entries) into the flat layout.

    Returns {"features": (n, F) float32, "mask": (n, F) bool, "stats": {"truncated": {branch: n
    items cut by padding}}}. Flat and fixed-size values are copied as float32 (bit for bit what
    uproot read, for float32 branches); jagged ones are padded with `pad_value`, mask False there.
    `name` ("flat") is how training, export and rootml.json call this layout.
    """

    name = "flat"

    def __init__(self, columns: Sequence[Column], pad_value: float = 0.0):
        self.columns = list(columns)
        self.pad_value = float(pad_value)
        self.feature_names = [name for column in self.columns for name in column.names()]

    def __call__(self, chunk: Mapping[str, Any]) -> dict[str, Any]:
        n = _length(chunk, self.columns)
        features = np.empty((n, len(self.feature_names)), dtype=np.float32)
        mask = np.ones(features.shape, dtype=bool)
        truncated = {}
        for run, index in _jagged_runs(self.columns, chunk):
            # Consecutive fields of one collection: one fill and one mask write for all of them.
            block = slice(run[0][0].start, run[-1][0].start + run[-1][0].width)
            features[:, block] = self.pad_value
            mask[:, block] = index.mask if len(run) == 1 else np.tile(index.mask, (1, len(run)))
            for col, content in run:
                index.scatter(content, features, col.start)
                if index.cut:
                    truncated[col.branch] = index.cut
        for col in self.columns:
            if col.kind != "jagged":
                block = slice(col.start, col.start + col.width)
                features[:, block] = _numpy(chunk[col.branch]).reshape(n, col.width)
        return {"features": features, "mask": mask, "stats": {"truncated": truncated}}

    def __repr__(self) -> str:
        return f"FlatLayout({len(self.feature_names)} features, pad_value={self.pad_value})"


def _jagged_runs(
    columns: Sequence[Column], chunk: Mapping[str, Any]
) -> list[tuple[list[tuple[Column, np.ndarray]], PadIndex]]:
    """Jagged columns as runs of adjacent columns sharing one PadIndex (equal offsets and width),
    each column with its content."""
    indices: list[PadIndex] = []
    runs: list[tuple[list[tuple[Column, np.ndarray]], PadIndex]] = []
    previous = None
    for col in columns:
        if col.kind != "jagged":
            previous = None
            continue
        offsets, content = jagged_offsets(chunk[col.branch])
        index = next((i for i in indices if i.matches(offsets, col.width)), None)
        if index is None:
            index = PadIndex(offsets, col.width)
            indices.append(index)
        if previous is index and runs[-1][0][-1][0].start + col.width == col.start:
            runs[-1][0].append((col, content))
        else:
            runs.append(([(col, content)], index))
        previous = index
    return runs


def _numpy(values: Any) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else ak.to_numpy(values)


def _length(chunk: Mapping[str, Any], columns: Sequence[Column]) -> int:
    if not columns:
        return len(next(iter(chunk.values()))) if chunk else 0
    return len(chunk[columns[0].branch])
