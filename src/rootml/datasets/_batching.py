"""Rows -> whole batches: a bounded shuffle buffer over blocks of rows (dicts of numpy arrays)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

Block = dict[str, np.ndarray]


class Batcher:
    """Collects blocks (dicts of arrays with the same first dimension) and cuts batches.

    With a `rng`, each cut draws its batches at random from all the rows waiting (at most
    `buffer` + one block) and `buffer` rows are kept back to mix with the next block; without,
    rows keep their order. Memory: at most `buffer` + the largest block rows.
    """

    def __init__(self, batch_size: int, buffer: int = 0, rng: np.random.Generator | None = None):
        self.batch_size, self.buffer, self.rng = batch_size, buffer if rng else 0, rng
        self.pending: Block | None = None
        self._pool = _ShufflePool(batch_size, self.buffer, rng) if rng is not None else None

    def add(self, block: Block) -> Iterator[Block]:
        if not len(next(iter(block.values()))):
            return
        if self._pool is not None:
            yield from self._pool.add(block)
            return
        if self.pending is not None:
            # In order, only the rows left over need joining: the first batch takes them and the
            # head of the block; the rest stays a view of the block (no copy of a whole block).
            waiting = self.waiting
            need = self.batch_size - waiting
            head = {k: np.concatenate([self.pending[k], v[:need]]) for k, v in block.items()}
            self.pending = head
            if len(next(iter(head.values()))) < self.batch_size:
                return
            yield head
            block = {k: v[need:] for k, v in block.items()}
            self.pending = None
            if not len(next(iter(block.values()))):
                return
        if self.pending is None:
            self.pending = block
        else:
            self.pending = {k: np.concatenate([self.pending[k], block[k]]) for k in block}
        yield from self._cut(keep=self.buffer)

    def finish(self, drop_last: bool) -> Iterator[Block]:
        """The rows left, in whole batches, then the last partial batch unless `drop_last`."""
        if self._pool is not None:
            yield from self._pool.finish(drop_last)
            return
        yield from self._cut(keep=0)
        if self.pending is not None and not drop_last:
            yield self.pending
        self.pending = None

    @property
    def waiting(self) -> int:
        if self._pool is not None:
            return self._pool.size
        return 0 if self.pending is None else len(next(iter(self.pending.values())))

    def _cut(self, keep: int) -> Iterator[Block]:
        rows = self.waiting
        count = max(rows - keep, 0) // self.batch_size
        for i in range(count):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield {k: v[part] for k, v in self.pending.items()}
        if count:
            rest = slice(count * self.batch_size, rows)
            self.pending = (
                {k: v[rest] for k, v in self.pending.items()}
                if rows > count * self.batch_size
                else None
            )


class _ShufflePool:
    """The shuffle buffer. Rows stay where they were first stored (rows of preallocated arrays);
    `slots` lists the waiting ones in their logical order (logical position -> stored row).

    Each cut draws the same permutation as permuting all waiting rows would, and gives the same
    batches, but each row is copied twice only, into the pool and into its batch: a cut and the
    rows it keeps back move indices, never rows.
    """

    def __init__(self, batch_size: int, buffer: int, rng: np.random.Generator):
        self.batch_size, self.buffer, self.rng = batch_size, buffer, rng
        self.arrays: Block = {}
        self.slots = np.zeros(0, dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.slots)

    def add(self, block: Block) -> Iterator[Block]:
        # Logical positions: the waiting rows, then the block's.
        self.slots = np.concatenate([self.slots, self._store(block)])
        count = max(self.size - self.buffer, 0) // self.batch_size
        if not count:
            return
        order = self.rng.permutation(self.size)
        for i in range(count):
            yield self._gather(order[i * self.batch_size : (i + 1) * self.batch_size])
        self.slots = self.slots[order[count * self.batch_size :]]

    def finish(self, drop_last: bool) -> Iterator[Block]:
        count = self.size // self.batch_size
        rest = np.arange(self.size)
        if count:
            order = self.rng.permutation(self.size)
            for i in range(count):
                yield self._gather(order[i * self.batch_size : (i + 1) * self.batch_size])
            rest = order[count * self.batch_size :]
        if len(rest) and not drop_last:
            yield self._gather(rest)
        self.arrays, self.slots = {}, np.zeros(0, dtype=np.int64)

    def _gather(self, index: np.ndarray) -> Block:
        """New arrays of the rows at logical positions `index`, in that order."""
        stored = self.slots[index]
        # np.take copies whole rows (one memcpy each): 2-4x faster than fancy indexing here.
        return {key: np.take(values, stored, axis=0) for key, values in self.arrays.items()}

    def _store(self, block: Block) -> np.ndarray:
        """Copy `block` into stored rows that no waiting row uses; returns where it went."""
        rows = len(next(iter(block.values())))
        capacity = len(next(iter(self.arrays.values()))) if self.arrays else 0
        if capacity < self.size + rows:
            # Room for the buffer, a batch's leftover and a block: a steady stream never regrows.
            capacity = max(self.size + rows, self.buffer + self.batch_size + rows)
            for key, values in block.items():
                grown = np.empty((capacity, *values.shape[1:]), dtype=values.dtype)
                old = self.arrays.get(key)
                if old is not None:
                    grown[: len(old)] = old
                self.arrays[key] = grown
        used = np.zeros(capacity, dtype=bool)
        used[self.slots] = True
        free = np.flatnonzero(~used)[:rows]
        for key, values in self.arrays.items():
            _as_rows(values)[free] = _as_rows(np.ascontiguousarray(block[key], values.dtype))
        return free


def _as_rows(array: np.ndarray) -> np.ndarray:
    """A C-contiguous array as a 1-D array of opaque rows: numpy then moves each row as one
    memcpy instead of item by item (storing 100k rows of 131 features: 12 -> 9 ms)."""
    if array.ndim == 1 or not array.size:
        return array
    return array.reshape(len(array), -1).view(f"V{array[0].nbytes}")[:, 0]
