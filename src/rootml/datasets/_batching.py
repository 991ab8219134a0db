"""Rows -> whole batches: a bounded shuffle buffer over blocks of rows (dicts of numpy arrays)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

Block = dict[str, np.ndarray]


class Batcher:
    """Collects blocks (dicts of arrays with the same first dimension) and cuts batches.

    With a `rng`, the rows waiting (at most `buffer` + one block) are permuted before each cut,
    and `buffer` rows are kept back to mix with the next block; without, rows keep their order.
    Memory: at most `buffer` + the largest block rows.
    """

    def __init__(self, batch_size: int, buffer: int = 0, rng: np.random.Generator | None = None):
        self.batch_size, self.buffer, self.rng = batch_size, buffer if rng else 0, rng
        self.pending: Block | None = None

    def add(self, block: Block) -> Iterator[Block]:
        if not len(next(iter(block.values()))):
            return
        if self.pending is not None and self.rng is None:
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
        yield from self._cut(keep=0)
        if self.pending is not None and not drop_last:
            yield self.pending
        self.pending = None

    @property
    def waiting(self) -> int:
        return 0 if self.pending is None else len(next(iter(self.pending.values())))

    def _cut(self, keep: int) -> Iterator[Block]:
        rows = self.waiting
        count = max(rows - keep, 0) // self.batch_size
        if not count:
            return
        if self.rng is not None:
            order = self.rng.permutation(rows)
            self.pending = {k: v[order] for k, v in self.pending.items()}
        for i in range(count):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield {k: v[part] for k, v in self.pending.items()}
        rest = slice(count * self.batch_size, rows)
        self.pending = (
            {k: v[rest] for k, v in self.pending.items()}
            if rows > count * self.batch_size
            else None
        )
