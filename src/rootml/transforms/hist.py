"""Per-branch histograms per class, filled chunk by chunk alongside the Specs, drawn as PNG.

The bins are fixed before filling (a single pass cannot know the final range): `set_ranges`
takes them from the first chunk(s) read, or from a fitted Specs' min/max when one is given.
Values outside that range are counted into the first or last bin and reported as `outside`, so
nothing is silently lost; parts filled in parallel merge exactly (counts add up).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rootml.transforms.pad import jagged_parts


class Histograms:
    """Counts (n_classes, bins) per branch over a fixed range per branch.

    branches: name -> kind ("flat", "fixed", "jagged"); classes: the class labels (ints), in
    the order counts are kept; names: a display name per class (default str(label)).
    Every item of a jagged branch and every element of a fixed-size array counts; NaN/inf never.
    """

    def __init__(
        self,
        branches: Mapping[str, str],
        classes: Sequence[int] = (0,),
        bins: int = 50,
        names: Sequence[str] | None = None,
    ):
        self.kinds = dict(branches)
        self.classes = [int(c) for c in classes]
        self.names = list(names) if names is not None else [str(c) for c in self.classes]
        self.bins = int(bins)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.counts = {b: np.zeros((len(self.classes), self.bins), np.int64) for b in self.kinds}
        self.outside = dict.fromkeys(self.kinds, 0)

    def empty_copy(self) -> Histograms:
        """Same branches, classes, bins and ranges, no counts: one per part filled in parallel."""
        other = Histograms(self.kinds, self.classes, self.bins, self.names)
        other.ranges = dict(self.ranges)
        return other

    def set_ranges(self, source: Mapping[str, Any]) -> None:
        """Fix the bins: `source` is a chunk (branch -> array), whose finite min/max is taken, or
        a mapping branch -> (low, high). An empty or constant range is widened by 0.5 each way."""
        for branch, kind in self.kinds.items():
            values = source[branch]
            if isinstance(values, tuple):
                low, high = float(values[0]), float(values[1])
            else:
                finite = _finite(_flat_values(values, kind))
                low, high = (float(finite.min()), float(finite.max())) if finite.size else (0, 0)
            if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
                low, high = (low, low) if np.isfinite(low) else (0.0, 0.0)
                low, high = low - 0.5, high + 0.5
            self.ranges[branch] = (low, high)

    def update(self, chunk: Mapping[str, Any], classes: np.ndarray) -> None:
        """Add a chunk; `classes` (n,) int: index into `self.classes` of each entry's class."""
        if not self.ranges:
            self.set_ranges(chunk)
        classes = np.asarray(classes, dtype=np.int64)
        for branch, kind in self.kinds.items():
            values = chunk[branch]
            if kind == "jagged":
                counts, values = jagged_parts(values)
                labels = np.repeat(classes, counts)
            else:
                values = np.asarray(values).reshape(len(classes), -1)
                labels = np.repeat(classes, values.shape[1])
                values = values.reshape(-1)
            values = np.asarray(values, dtype=np.float64)
            finite = np.isfinite(values)
            if not finite.all():
                values, labels = values[finite], labels[finite]
            low, high = self.ranges[branch]
            self.outside[branch] += int(((values < low) | (values > high)).sum())
            index = self._bin(branch, values)
            self.counts[branch] += np.bincount(
                labels * self.bins + index, minlength=len(self.classes) * self.bins
            ).reshape(len(self.classes), self.bins)

    def _bin(self, branch: str, values: np.ndarray) -> np.ndarray:
        """Bin index of each value as numpy.histogram computes it (the upper edge belongs to the
        last bin), values outside clipped into the edge bins."""
        low, high = self.ranges[branch]
        edges = self.edges(branch)
        index = np.floor((values - low) * (self.bins / (high - low)))
        index = np.clip(index, 0, self.bins - 1).astype(np.int64)
        # Rounding can put a value one bin off its edges; move it back, as numpy does.
        index -= values < edges[index]
        index += (values >= edges[index + 1]) & (index != self.bins - 1)
        return np.clip(index, 0, self.bins - 1)

    def merge(self, other: Histograms) -> Histograms:
        """Add another part filled over the same ranges; returns self."""
        if other.ranges != self.ranges or other.classes != self.classes:
            raise ValueError("cannot merge histograms of other ranges or classes")
        for branch in self.kinds:
            self.counts[branch] += other.counts[branch]
            self.outside[branch] += other.outside[branch]
        return self

    def edges(self, branch: str) -> np.ndarray:
        low, high = self.ranges[branch]
        return np.linspace(low, high, self.bins + 1)

    def plot(self, out_dir: str | os.PathLike) -> list[Path]:
        """One PNG per branch in `out_dir` (created): each class as a step histogram normalised to
        unit area, so the shapes of classes of different sizes compare. Returns the paths."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for branch in self.kinds:
            # A Figure with its own Agg canvas: no pyplot global state, no display needed.
            figure = Figure(figsize=(5, 3.6))
            FigureCanvasAgg(figure)
            axes = figure.add_subplot()
            edges = self.edges(branch)
            for row, name in enumerate(self.names):
                counts = self.counts[branch][row]
                total = counts.sum()
                if not total:
                    continue
                density = counts / (total * np.diff(edges))
                axes.stairs(density, edges, label=f"{name} ({total})")
            if self.outside[branch]:
                axes.set_title(f"{self.outside[branch]} values beyond the range, in the edge bins")
            axes.set_xlabel(branch)
            axes.set_ylabel("density")
            axes.legend(fontsize=7)
            figure.tight_layout()
            path = out / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', branch)}.png"
            figure.savefig(path, dpi=80)
            written.append(path)
        return written


def _flat_values(values: Any, kind: str) -> np.ndarray:
    if kind == "jagged":
        return np.asarray(jagged_parts(values)[1], dtype=np.float64)
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]
