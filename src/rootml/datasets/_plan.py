"""Work units and their split over ranks and workers: pure functions, no I/O.

A work unit is (file, entry_start, entry_stop). Unit i of an epoch's order belongs to global shard
`i % (world_size * num_workers)`, and the global shard of a worker is
`rank * num_workers + worker_id`: every unit is read by exactly one worker of one rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rootml.errors import ConfigError


class Unit(NamedTuple):
    file: int
    start: int
    stop: int


def split_range(
    start: int, stop: int, chunk_size: int, boundaries: Sequence[int] = ()
) -> list[tuple[int, int]]:
    """Cut [start, stop) into pieces of about `chunk_size` entries, ending on `boundaries`
    (cluster/basket edges) where one lies within the last half of a piece. Raises ConfigError
    for a chunk_size below 1 (which would never advance)."""
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, not {chunk_size!r}")
    edges = np.asarray([b for b in boundaries if start < b < stop], dtype=np.int64)
    pieces, begin = [], start
    while begin < stop:
        target = min(begin + chunk_size, stop)
        if target < stop:
            near = edges[(edges > begin + chunk_size // 2) & (edges <= target)]
            target = int(near[-1]) if near.size else target
        pieces.append((begin, target))
        begin = target
    return pieces


def plan_units(
    ranges: Sequence[tuple[int, int]],
    chunk_size: int,
    boundaries: Sequence[Sequence[int]] | None = None,
) -> list[Unit]:
    """All work units of the selected entry range [start, stop) of each file, in file order."""
    units = []
    for index, (start, stop) in enumerate(ranges):
        edges = boundaries[index] if boundaries is not None else ()
        units += [Unit(index, a, b) for a, b in split_range(start, stop, chunk_size, edges)]
    return units


def order_units(units: Sequence[Unit], shuffle: bool, seed: int, epoch: int) -> list[Unit]:
    """The epoch's order of units. Without shuffle: as planned. With shuffle: each file's units,
    in a random order, are spread evenly over the epoch (a random offset inside each even slot),
    so any stretch of the order holds every file in proportion to its size."""
    if not shuffle:
        return list(units)
    rng = np.random.default_rng([seed, epoch])
    files = np.asarray([u.file for u in units])
    keys = np.empty(len(units))
    for f in np.unique(files):
        where = np.flatnonzero(files == f)
        slots = rng.permutation(len(where))
        keys[where] = (slots + rng.random(len(where))) / len(where)
    return [units[i] for i in np.argsort(keys, kind="stable")]


def shard_units(
    units: Sequence[Unit], rank: int, world_size: int, worker: int, num_workers: int
) -> list[Unit]:
    """The units of one worker of one rank: every (world_size * num_workers)-th unit."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ConfigError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
    shard = rank * num_workers + worker
    return list(units[shard :: world_size * num_workers])


def split_nevts(entries: Sequence[int], nevts: int) -> list[int]:
    """Split a total of `nevts` entries over files in proportion to their entries (largest
    remainders get the leftover), never more than a file holds."""
    entries = np.asarray(entries, dtype=np.int64)
    total = int(entries.sum())
    if nevts >= total:
        return entries.tolist()
    exact = entries * nevts / total
    share = np.floor(exact).astype(np.int64)
    leftover = nevts - int(share.sum())
    order = np.argsort(-(exact - share), kind="stable")
    share[order[:leftover]] += 1
    return np.minimum(share, entries).tolist()
