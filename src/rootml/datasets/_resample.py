"""Under- and oversampling of classes (ROOT RDataLoader's sampling_type / sampling_ratio), entry
by entry.

Each entry of class c is kept floor(f_c) or floor(f_c) + 1 times, the second with probability
frac(f_c), so its expected count is f_c: f_c < 1 drops majority entries (undersampling), f_c > 1
repeats minority entries (oversampling). The draw is a hash of (seed, epoch, file, entry), not a
stream of random numbers: an entry gets the same decision whatever unit, worker or rank reads it
and after a resume, so exactly-once holds for the kept entries; each epoch draws anew.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rootml.datasets import _arguments as args
from rootml.datasets._reader import UnitReader
from rootml.datasets._reserved import exact_int64
from rootml.errors import ConfigError, FileAccessError

log = logging.getLogger(__name__)

MODES = ("undersample", "oversample")
REPORT = {"undersample": "undersampled", "oversample": "oversampled"}


class Resampling:
    """The factor f_c of each class from its entry count: undersample: every class down to
    smallest / ratio entries (those smaller stay whole); oversample: every class up to
    ratio x largest (those larger stay as they are). ratio in (0, 1] is the smallest class
    over the largest after resampling, as ROOT's sampling_ratio; default 1 (equal counts)."""

    def __init__(self, mode: str, ratio: Any, counts: Mapping[int, int], seed: int):
        self.mode, self.ratio = options(mode, ratio)
        self.counts = {int(c): int(n) for c, n in sorted(counts.items()) if n > 0}
        if len(self.counts) < 2:
            raise ConfigError(
                f"resample={mode!r} needs entries of two classes or more, not {self.counts}"
            )
        low, high = min(self.counts.values()), max(self.counts.values())
        if self.ratio < low / high:
            raise ConfigError(
                f"resample_ratio={self.ratio!r} is below the classes' own ratio {low / high:.4g} "
                f"(entries per class {self.counts}): nothing would be {REPORT[self.mode]}; "
                f"give resample_ratio >= {low / high:.4g}"
            )
        if self.mode == "undersample":
            target = low / self.ratio
            self.factors = {c: min(1.0, target / n) for c, n in self.counts.items()}
        else:
            target = self.ratio * high
            self.factors = {c: max(1.0, target / n) for c, n in self.counts.items()}
        self.seed = seed
        self.report_key = REPORT[self.mode]

    def __repr__(self) -> str:
        factors = {c: round(f, 4) for c, f in self.factors.items()}
        return f"Resampling({self.mode!r}, ratio={self.ratio}, counts={self.counts}, factors={factors})"

    @property
    def expected(self) -> dict[int, float]:
        """Expected entries per class and epoch after resampling."""
        return {c: n * self.factors[c] for c, n in self.counts.items()}

    def copies(self, label: np.ndarray, file: int, entries: np.ndarray, epoch: int) -> np.ndarray:
        """How many times each entry (of class `label`, entry number `entries` in file index
        `file`) is used in `epoch`, int64. Classes not counted are kept once."""
        classes = np.array(list(self.factors), dtype=np.int64)
        factor = np.array(list(self.factors.values()))
        index = np.searchsorted(classes, label)
        index = np.minimum(index, len(classes) - 1)
        f = np.where(classes[index] == label, factor[index], 1.0)
        whole = np.floor(f)
        u = uniforms(self.seed, epoch, file, entries)
        return (whole + (u < f - whole)).astype(np.int64)

    def apply(
        self, block: dict[str, np.ndarray], file: int, epoch: int
    ) -> tuple[dict[str, np.ndarray], Counter]:
        """The rows of `block` (arrays of one row per entry, with "label" and "entry") each
        repeated its copies (0: dropped), in order; and per class the entries dropped or copies
        added."""
        label = block["label"]
        copies = self.copies(label, file, block["entry"], epoch)
        changed = np.abs(copies - 1)
        counts = Counter()
        for c in np.unique(label[changed > 0]):
            counts[int(c)] = int(changed[label == c].sum())
        rows = np.repeat(np.arange(len(copies)), copies)
        return {key: value[rows] for key, value in block.items()}, counts


def options(mode: Any, ratio: Any) -> tuple[str, float]:
    """(mode, ratio) checked: ConfigError naming `resample` or `resample_ratio`."""
    mode = args.one_of("resample", mode, MODES)
    number = 1.0 if ratio is None else args.real("resample_ratio", ratio)
    if not 0 < number <= 1:
        raise ConfigError(f"resample_ratio must be in (0, 1], not {ratio!r}")
    return mode, number


def uniforms(seed: int, epoch: int, file: int, entries: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per entry, a function of (seed, epoch, file, entry) alone:
    splitmix64's finaliser chained over the four keys (uint64 arithmetic wraps)."""
    key = np.zeros(1, dtype=np.uint64)
    for part in (seed, epoch, file):
        key = _mix(key ^ np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF))
    x = _mix(key ^ np.asarray(entries, dtype=np.int64).astype(np.uint64))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _mix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def file_class_counts(labels: Sequence[int], ranges: Sequence[tuple[int, int]]) -> Counter:
    """Entries per class of per-file labels over the planned entry ranges (before any cut)."""
    counts = Counter()
    for label, (start, stop) in zip(labels, ranges):
        counts[label] += stop - start
    return counts


def class_counts(ds: Any) -> Counter:
    """Entries per class of dataset `ds`'s selection, after its cut: from the file labels and
    planned ranges when there is neither label_branch nor cut (no reading), else a pass reading
    the label branch and the cut's branches, files in parallel threads (with on_error="skip",
    unreadable units are left out)."""
    if not ds.label_branch and not ds.cut:
        return file_class_counts(ds.file_labels, ds.ranges)
    by_file: dict[int, list] = {}
    for unit in ds.plan:
        by_file.setdefault(unit.file, []).append(unit)

    def one_file(units: list) -> Counter:
        names = [ds.label_branch] if ds.label_branch else []
        reader = UnitReader(
            ds.files, ds.tree, names, ds.aliases, ds.cut, ds.retries, ds.backoff, max_open=1,
            cache=ds.cache,
        )  # fmt: skip
        counts = Counter()
        try:
            for unit in units:
                try:
                    columns, entries = reader.read(unit)
                except FileAccessError:
                    if ds.on_error == "raise":
                        raise
                    continue  # skipped and counted in the report when iterating
                if not ds.label_branch:
                    counts[ds.file_labels[unit.file]] += len(entries)
                    continue
                context = {"url": ds.files[unit.file], "tree": ds.tree, "entries": unit[1:]}
                label = exact_int64(
                    columns[ds.label_branch], "label_branch", ds.label_branch, entries, **context
                )
                classes, n = np.unique(label, return_counts=True)
                counts.update(dict(zip(classes.tolist(), n.tolist())))
        finally:
            reader.close()
        return counts

    log.info("resample: counting the entries of each class (label_branch or cut)")
    total = Counter()
    with ThreadPoolExecutor(min(4, max(len(by_file), 1))) as pool:
        for part in pool.map(one_file, by_file.values()):
            total.update(part)
    return total
