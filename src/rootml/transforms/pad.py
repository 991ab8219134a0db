"""Jagged -> padded: the first `max_len` items of each entry, `pad_value` after, and a mask."""

from __future__ import annotations

import awkward as ak
import numpy as np


def jagged_offsets(array: ak.Array | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,) int64 starting at 0, content (offsets[-1],)) of a one-level jagged array
    of numbers, zero-copy where awkward allows. Raises TypeError for anything else."""
    layout = ak.to_layout(array)
    if isinstance(layout, ak.contents.ListArray):
        layout = layout.to_ListOffsetArray64(True)
    if not isinstance(layout, ak.contents.ListOffsetArray):
        raise TypeError(
            f"expected a jagged array of numbers, got {array.type if hasattr(array, 'type') else type(array)}"
        )
    offsets = np.asarray(layout.offsets)
    content = layout.content[offsets[0] : offsets[-1]]
    content = content.data if isinstance(content, ak.contents.NumpyArray) else ak.to_numpy(content)
    if offsets[0] != 0:
        offsets = offsets - offsets[0]
    return offsets.astype(np.int64, copy=False), content


def jagged_parts(array: ak.Array | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts (n,) int64, content (total,)) of a one-level jagged array of numbers, zero-copy
    where awkward allows."""
    offsets, content = jagged_offsets(array)
    return np.diff(offsets), content


class PadIndex:
    """Where the items of jagged arrays with given `offsets` go in an (n, max_len) block.

    Built once and reused for every branch with the same offsets (the fields of one collection
    share their counter), so padding a field costs one gather and one scatter.
    mask: (n, max_len) bool, True at a real item; cut: items dropped by truncation.
    """

    def __init__(self, offsets: np.ndarray, max_len: int):
        self.offsets, self.max_len = offsets, int(max_len)
        counts = np.diff(offsets)
        kept = np.minimum(counts, self.max_len)
        self.mask = np.arange(self.max_len) < kept[:, None]
        self.cut = int(offsets[-1] - kept.sum())
        # Flat positions of the kept items in the (n, max_len) block, in stored order.
        self._positions = np.flatnonzero(self.mask)
        # Which content items are kept; None when all are (the content is then used as it is).
        # A kept item at flat position p = row * max_len + j comes from offsets[row] + j.
        self._source = None
        if self.cut:
            shift = offsets[:-1] - np.arange(len(counts), dtype=np.int64) * self.max_len
            self._source = self._positions + np.repeat(shift, kept)
        self._in_rows: dict[int, np.ndarray] = {}

    def matches(self, offsets: np.ndarray, max_len: int) -> bool:
        return max_len == self.max_len and (
            offsets is self.offsets or np.array_equal(offsets, self.offsets)
        )

    def kept(self, content: np.ndarray) -> np.ndarray:
        """The items of `content` that are kept, in stored order."""
        return content if self._source is None else content[self._source]

    def pad(self, content: np.ndarray, out: np.ndarray, pad_value: float = 0.0) -> None:
        """Write the padded values of `content` into a C-contiguous `out` (n, max_len)."""
        out.fill(pad_value)
        out.reshape(-1)[self._positions] = self.kept(content)

    def scatter(self, content: np.ndarray, out: np.ndarray, start: int) -> None:
        """Write the kept items into columns start .. start + max_len of the C-contiguous matrix
        `out` (n, W); the padding positions are left as they are (fill them first)."""
        width = out.shape[1]
        positions = self._in_rows.get(width)
        if positions is None:
            # p = row * max_len + j  ->  row * width + j
            positions = self._positions + (self._positions // max(self.max_len, 1)) * (
                width - self.max_len
            )
            self._in_rows[width] = positions
        # A view starting at column `start`: no per-field index arithmetic.
        out.reshape(-1)[start:][positions] = self.kept(content)


def pad_jagged(
    array: ak.Array,
    max_len: int,
    pad_value: float = 0.0,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pad or truncate a one-level jagged array of numbers to `max_len` items per entry.

    Returns values (n, max_len) of `dtype` with `pad_value` after the last real item, mask
    (n, max_len) bool (True at a real item), and the number of items cut off by truncation.
    Works on whole chunks; the item order is the stored order (sort first to keep the leading ones).
    """
    offsets, content = jagged_offsets(array)
    index = PadIndex(offsets, max_len)
    values = np.empty((len(offsets) - 1, int(max_len)), dtype=dtype)
    index.pad(content, values, pad_value)
    return values, index.mask, index.cut
