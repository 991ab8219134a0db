"""In-memory epochs (weaver's --in-memory, RDataLoader's load_eager) for data that fits.

The first full pass over a sample (an epoch that starts at its beginning) streams as always and
keeps a copy of every batch it yields, the padded arrays as numpy. When the pass ends, the rows
are sorted by (file, entry): the kept arrays then do not depend on the order they were read in
(shuffling, workers), so a resumed run rebuilds the very same arrays. Later passes read them
instead of the files: training passes in a permutation seeded by (seed, epoch, rank), cut into
batches of batch_size; evaluation passes in (file, entry) order.

Every rank keeps the rows of its own shard of the first epoch (each entry on exactly one rank)
and shuffles those, so each epoch still sees every entry exactly once. Memory: `limit` bytes for
all samples together; a sample that would exceed it is dropped with one log line and keeps
streaming. A run resumed after its first epoch reads its shard of epoch 1 once more, without
training, to rebuild the arrays before its first in-memory epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


class MemoryCache:
    """Kept arrays per sample name ("train", "val") under one byte limit (0: off)."""

    def __init__(self, limit: int, rank: int = 0):
        self.limit, self.rank = int(limit or 0), rank
        self.kept: dict[str, dict[str, np.ndarray]] = {}
        self.too_large: set[str] = set()
        self._filling: dict[str, list[dict[str, np.ndarray]]] = {}
        self._bytes: dict[str, int] = {}

    @property
    def used(self) -> int:
        """Bytes held: complete samples and the one being filled."""
        done = sum(a.nbytes for arrays in self.kept.values() for a in arrays.values())
        return done + sum(self._bytes.values())

    def ready(self, name: str) -> bool:
        return name in self.kept

    def wanted(self, name: str) -> bool:
        """Whether a pass over `name` should fill it (on, not held yet, not too large)."""
        return self.limit > 0 and name not in self.kept and name not in self.too_large

    def start(self, name: str) -> None:
        self._filling[name], self._bytes[name] = [], 0

    def add(self, name: str, batch: dict[str, torch.Tensor]) -> None:
        """Keep a copy of one batch (unpinned numpy) while `name` fits under the limit."""
        if name not in self._filling:
            return
        copy = {key: np.array(value.numpy()) for key, value in batch.items()}
        self._bytes[name] += sum(a.nbytes for a in copy.values())
        self._filling[name].append(copy)
        if self.used > self.limit:
            log.info(
                "in_memory: the %s sample needs more than %s bytes (the in_memory limit, with "
                "%s held); it is read from the files every epoch",
                name, f"{self.limit:,}", f"{self.used - self._bytes[name]:,}",
            )  # fmt: skip
            self.too_large.add(name)
            self.abandon(name)

    def abandon(self, name: str) -> None:
        """Forget a pass that did not cover the whole sample."""
        self._filling.pop(name, None)
        self._bytes.pop(name, None)

    def finish(self, name: str) -> None:
        """The pass over `name` is complete: join, sort by (file, entry), keep."""
        batches = self._filling.pop(name, None)
        self._bytes.pop(name, None)
        if batches is None:
            return
        if not batches:
            self.kept[name] = {}
            return
        joined = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        order = np.lexsort((joined["entry"], joined["file"]))
        self.kept[name] = {k: v[order] for k, v in joined.items()}
        rows = len(order)
        log.info("in_memory: %s sample kept, %d rows, %s bytes", name, rows, f"{self.used:,}")

    def rows(self, name: str) -> int:
        arrays = self.kept[name]
        return len(arrays["entry"]) if arrays else 0

    def batches(
        self, name: str, batch_size: int, seed: int | None = None, epoch: int = 0, skip: int = 0
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the kept rows: permuted by (seed, epoch, rank) when `seed` is given, else in
        (file, entry) order; the first `skip` batches left out (a resumed epoch)."""
        arrays, n = self.kept[name], self.rows(name)
        order = (
            np.random.default_rng([seed, epoch, self.rank]).permutation(n)
            if seed is not None
            else np.arange(n)
        )
        for start in range(skip * batch_size, n, batch_size):
            index = order[start : start + batch_size]
            yield {k: torch.from_numpy(v[index]) for k, v in arrays.items()}
