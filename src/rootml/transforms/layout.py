"""Chunk -> flat layout: features (n, F) float32 and mask (n, F) bool, in a fixed column order."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from rootml.transforms.pad import PadIndex, jagged_offsets, put_columns

# Bytes of features and mask written at a time: what a CPU's caches hold (measured: 1-4 MB are 25% faster than whole chunks, 256 kB slower).
_TILE_BYTES = 1 << 22


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
        self._arrays = Recycled()

    def __call__(self, chunk: Mapping[str, Any]) -> dict[str, Any]:
        n = _length(chunk, self.columns)
        features = self._arrays.empty((n, len(self.feature_names)), np.float32)
        mask = self._arrays.empty(features.shape, bool)
        truncated = {}
        runs = []
        for run, index in _jagged_runs(self.columns, chunk):
            # Consecutive fields of one collection: padded side by side, one write for all.
            contents = [content for _, content in run]
            runs.append((run[0][0].start, len(run), index, index.padder(contents, self.pad_value)))
            if index.cut:
                truncated.update((col.branch, index.cut) for col, _ in run)
        flat = [
            (col.start, _numpy(chunk[col.branch]).reshape(n, col.width))
            for col in self.columns
            if col.kind != "jagged"
        ]
        # Written in slices of rows that stay in the CPU cache while every column is written:
        # column by column over the whole chunk, each column would pull every row of the matrix
        # through memory again.
        step = max(_TILE_BYTES // max(features.shape[1] * 5, 1), 1)
        for start in range(0, n, step):
            stop = min(start + step, n)
            rows, rows_mask = features[start:stop], mask[start:stop]
            rows_mask.fill(True)
            for column, fields, index, padder in runs:
                put_columns(rows, column, padder(start, stop))
                put_columns(rows_mask, column, index.mask_rows(fields, start, stop))
            for column, values in flat:
                rows[:, column : column + values.shape[1]] = values[start:stop]
        return {"features": features, "mask": mask, "stats": {"truncated": truncated}}

    def release(self) -> None:
        """Free the arrays kept for reuse (the end of an iteration)."""
        self._arrays.clear()

    def __repr__(self) -> str:
        return f"FlatLayout({len(self.feature_names)} features, pad_value={self.pad_value})"


class Recycled:
    """New arrays for a layout's output, made from earlier ones that nothing refers to any more.

    A fresh array of a chunk's features (50 MB for 100k rows of 131 features) comes from the
    kernel as untouched pages, and filling them (page faults, zeroing) cost ~9 ms per chunk, a
    sixth of padding it. An array handed out lives on in batches (views, torch tensors made from
    them hold a reference to it), so it is reused only when this pool holds the only reference:
    its memory can then be seen by no one. At most `keep` arrays are held (a few chunks' worth:
    the ones being batched and the ones read ahead)."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._arrays: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        with self._lock:
            for array in self._arrays:
                # References: this list, `array` and getrefcount's argument: no one else's.
                if array.shape == shape and array.dtype == dtype and sys.getrefcount(array) <= 3:
                    return array
            array = np.empty(shape, dtype=dtype)
            if array.nbytes >= _TILE_BYTES:  # small ones are cheap to make
                self._arrays.append(array)
                del self._arrays[: -self.keep]
            return array

    def clear(self) -> None:
        with self._lock:
            self._arrays.clear()

    def __reduce__(self) -> tuple:
        return (Recycled, (self.keep,))  # the arrays stay in their process


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
