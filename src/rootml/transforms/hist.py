"""Per-branch histograms per class, filled chunk by chunk alongside the Specs, drawn as PNG.

The bins are fixed before filling (a single pass cannot know the final range): `set_ranges`
takes them from the first chunk(s) read, or from a fitted Specs' min/max when one is given.
Values outside that range are counted into the first or last bin and reported as `outside`, so
nothing is silently lost; parts filled in parallel merge exactly (counts add up).
"""

from __future__ import annotations

import os
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
        # Whether every value so far was a whole number (nJet, charges, flags): drawn per integer.
        self.integral = dict.fromkeys(self.kinds, True)

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
            if self.integral[branch]:
                self.integral[branch] = bool(np.all(values == np.round(values)))
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
            self.integral[branch] = self.integral[branch] and other.integral[branch]
        return self

    def edges(self, branch: str) -> np.ndarray:
        low, high = self.ranges[branch]
        return np.linspace(low, high, self.bins + 1)

    def plot(
        self,
        out_dir: str | os.PathLike,
        *,
        log_y: bool = False,
        progress: bool | str | None = None,
    ) -> list[Path]:
        """One PNG per branch in `out_dir` (created), named after the branch: the branch in the
        title, each class a step histogram normalised to unit area (so the shapes of classes of
        different sizes compare), its name and number of values in the legend; values beyond
        the bins, counted in the edge bins, are noted in the corner. log_y: a logarithmic y axis
        (for tails). progress: as rootml.progress.mode (drawing many branches takes a while).
        Returns the paths."""
        from rootml.plotting import Canvas, file_name
        from rootml.progress import Progress

        out = Path(out_dir)
        canvas, written = Canvas(), []
        with Progress("drawing histograms", len(self.kinds), "plots", show=progress) as bar:
            for branch in self.kinds:
                path = out / f"{file_name(branch)}.png"
                written.append(canvas.draw(path, lambda axes, b=branch: self._draw(axes, b, log_y)))
                bar.update(1)
        return written

    def fractions(self, branch: str) -> tuple[np.ndarray, np.ndarray]:
        """What plot draws: (edges, heights (n_classes, len(edges) - 1)), the fraction of each
        class's values per bin (0 for a class without values), so each class sums to 1 and
        classes of different sizes compare. A branch of whole numbers only is drawn per
        integer: its bins become [k - 0.5, k + 0.5) spans of the integers they hold (bins
        holding none are dropped) and the heights the fraction per integer (the span's fraction
        over its number of integers), so bins narrower than 1 or holding 1 or 2 integers draw
        no picket fence."""
        edges, counts = self.edges(branch), self.counts[branch].astype(np.float64)
        if self.integral[branch]:
            first = np.ceil(edges[:-1])  # the first integer of each bin
            after = np.append(first[1:], np.floor(edges[-1]) + 1)  # the last bin holds its edge
            keep = after > first
            edges = np.append(first[keep], after[-1]) - 0.5
            counts = counts[:, keep]
        totals = counts.sum(1, keepdims=True)
        fractions = counts / np.where(totals > 0, totals, 1)
        return edges, fractions / np.diff(edges) if self.integral[branch] else fractions

    def _draw(self, axes: Any, branch: str, log_y: bool) -> None:
        edges, heights = self.fractions(branch)
        for row, name in enumerate(self.names):
            total = int(self.counts[branch][row].sum())
            if total:
                axes.stairs(heights[row], edges, lw=1.6,
                            label=f"{self._legend_name(name)} ({total:,} values)")  # fmt: skip
        kind = self.kinds[branch]
        axes.set_title(branch, loc="left", fontweight="bold")
        outside = self.outside[branch]
        if outside:
            low, high = self.ranges[branch]
            note = f"{outside:,} value{'s' * (outside != 1)} beyond [{low:.4g}, {high:.4g}]"
            axes.set_title(f"{note}\ncounted in the edge bins", loc="right", fontsize=9)
        every = {"jagged": " (every item)", "fixed": " (every element)"}.get(kind, "")
        axes.set_xlabel(branch + every)
        per = "integer" if self.integral[branch] else "bin"
        axes.set_ylabel(f"fraction of values per {per}")
        if self.integral[branch]:
            from matplotlib.ticker import MaxNLocator

            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log_y:
            axes.set_yscale("log")
        if axes.has_data():
            axes.legend(fontsize=10)

    def _legend_name(self, name: str) -> str:
        """A class name as given; a bare label reads "class N", one unnamed class "all"."""
        if name.lstrip("-").isdigit():
            return "all" if len(self.names) == 1 else f"class {name}"
        return name


def _flat_values(values: Any, kind: str) -> np.ndarray:
    if kind == "jagged":
        return np.asarray(jagged_parts(values)[1], dtype=np.float64)
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]
