"""Counts of what was skipped, truncated or dropped, shared by the main process and its
DataLoader workers (fork or spawn), so the user reads one report after the epoch."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Sequence


class SharedReport:
    """Named int64 counters in shared memory. Keys are fixed at construction; `add` is atomic
    across processes. Pickles into DataLoader workers with the dataset."""

    def __init__(self, keys: Sequence[str]):
        self.keys = list(keys)
        self._index = {key: i for i, key in enumerate(self.keys)}
        # A spawn-context lock can be inherited by both forked and spawned workers.
        self._counts = multiprocessing.get_context("spawn").Array("q", len(self.keys))

    def add(self, key: str, count: int) -> None:
        with self._counts.get_lock():
            self._counts[self._index[key]] += int(count)

    def counts(self) -> Counter:
        """Non-zero counters, e.g. {"skipped_entries": 2421, "truncated:Jet_pt": 40}."""
        with self._counts.get_lock():
            values = list(self._counts)
        return Counter({k: v for k, v in zip(self.keys, values) if v})

    def extend(self, keys: Sequence[str]) -> None:
        """Add counters (at construction, before the report is shared with workers)."""
        new = [key for key in keys if key not in self._index]
        if not new:
            return
        old = list(self._counts)
        self.keys += new
        self._index = {key: i for i, key in enumerate(self.keys)}
        self._counts = multiprocessing.get_context("spawn").Array("q", len(self.keys))
        self._counts[: len(old)] = old
