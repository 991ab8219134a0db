"""Jagged -> padded: the first `max_len` items of each entry, `pad_value` after, and a mask."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import awkward as ak
import numpy as np
from numpy.lib.stride_tricks import as_strided

# Largest per-count lookup table (rows 0..max_len items); longer pads compute masks per entry.
_TABLE_BYTES = 1 << 20


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


def put_columns(matrix: np.ndarray, start: int, block: np.ndarray) -> None:
    """matrix[:, start:start + w] = block for a C-contiguous (n, W) `matrix` and a C-contiguous
    (n, w) `block` of the same dtype, one memory copy per row.

    numpy copies a column range of a wide matrix element by element with the matrix's row stride
    between rows; seen as one opaque w-item cell per row, the same copy is a row of memcpy calls."""
    n, width = block.shape
    if not n or not width:
        return
    size = width * matrix.itemsize
    offset = start * matrix.itemsize
    rows = matrix.view(np.uint8).reshape(n, -1)[:, offset : offset + size]
    rows.view(f"V{size}")[:, 0] = block.view(f"V{size}")[:, 0]


class PadIndex:
    """Where the items of jagged arrays with given `offsets` go in an (n, max_len) block.

    Built once and reused for every branch with the same offsets (the fields of one collection
    share their counter). mask: (n, max_len) bool, True at a real item; kept: (n,) items kept
    per entry; cut: items dropped by truncation.
    """

    def __init__(self, offsets: np.ndarray, max_len: int):
        self.offsets, self.max_len = offsets, int(max_len)
        self.kept = np.minimum(np.diff(offsets), self.max_len)
        self.cut = int(offsets[-1] - self.kept.sum())
        self.mask = np.arange(self.max_len) < self.kept[:, None]
        self._full = bool(len(self.kept)) and int(self.kept.min()) == self.max_len
        self._cache: dict[tuple, np.ndarray] = {}

    def matches(self, offsets: np.ndarray, max_len: int) -> bool:
        if offsets is self.offsets:
            return max_len == self.max_len
        return (
            max_len == self.max_len
            and len(offsets) == len(self.offsets)
            and offsets[-1] == self.offsets[-1]
            and np.array_equal(offsets, self.offsets)
        )

    def mask_rows(self, copies: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, copies * max_len) bool: the mask of entries start .. stop, repeated for
        `copies` fields side by side."""
        return self._rows(np.dtype(bool), copies, None, start, stop)

    def padded(
        self,
        contents: Sequence[np.ndarray],
        pad_value: float = 0.0,
        dtype: np.dtype | type = np.float32,
    ) -> np.ndarray:
        """(n, len(contents) * max_len) of `dtype`, C-contiguous: for each field (its content, all
        with these offsets) side by side, the first max_len items of each entry (cast as numpy
        assigns) then `pad_value`."""
        return self.padder(contents, pad_value, dtype)(0, len(self.kept))

    def padder(
        self,
        contents: Sequence[np.ndarray],
        pad_value: float = 0.0,
        dtype: np.dtype | type = np.float32,
    ) -> Callable[[int, int], np.ndarray]:
        """rows(start, stop): `padded` of entries start .. stop, for building a large block in
        slices that stay in the CPU cache."""
        dtype = np.dtype(dtype)
        fields, width = len(contents), self.max_len
        if not fields or not width:
            return lambda start, stop: np.full((stop - start, fields * width), pad_value, dtype)
        # The fields one after the other, each followed by `width` slots: an entry's values in a
        # field are the `width` items from its first one, a window into that copy (one memcpy per
        # entry and field). Truncation comes free; the slots after an entry's last item (the next
        # entries' items) get pad_value's bits.
        total = int(self.offsets[-1])
        stride = total + width
        source = np.empty(fields * stride, dtype=dtype)
        for field, content in enumerate(contents):
            source[field * stride : field * stride + total] = content[:total]
            source[field * stride + total : (field + 1) * stride] = pad_value
        size = width * dtype.itemsize
        windows = as_strided(
            source.view(np.uint8),
            ((fields - 1) * stride + total + 1, size),
            (dtype.itemsize, 1),
            writeable=False,
        ).view(f"V{size}")[:, 0]
        firsts = np.arange(0, fields * stride, stride)
        unsigned = np.dtype(f"u{dtype.itemsize}")
        pad_bits = np.array(pad_value, dtype=dtype).view(unsigned)[()]

        def rows(start: int, stop: int) -> np.ndarray:
            out = windows[self.offsets[start:stop, None] + firsts]
            out = out.view(dtype).reshape(stop - start, fields * width)
            if self._full:
                return out  # no entry has fewer than max_len items: nothing to pad
            bits = out.view(unsigned)
            np.bitwise_and(bits, self._rows(unsigned, fields, None, start, stop), out=bits)
            if pad_bits:
                np.bitwise_or(bits, self._rows(unsigned, fields, pad_bits, start, stop), out=bits)
            return out

        return rows

    def _rows(
        self, dtype: np.dtype, fields: int, pad: Any, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """(stop - start, fields * max_len) of `dtype` for entries start .. stop: bool: True at
        real items; unsigned ints with pad None: all bits set at real items, none at padding;
        else `pad` at padding and none at real items. Looked up per entry's number of kept items
        in a (max_len + 1)-row table where that table is small."""
        kept = self.kept[start:stop]
        if (self.max_len + 1) * fields * self.max_len * dtype.itemsize > _TABLE_BYTES:
            return self._values(np.arange(self.max_len) < kept[:, None], dtype, fields, pad)
        key = (dtype, fields, pad)
        table = self._cache.get(key)
        if table is None:
            table = np.arange(self.max_len) < np.arange(self.max_len + 1)[:, None]
            table = self._cache[key] = self._values(table, dtype, fields, pad)
        return np.take(table, kept, axis=0)

    @staticmethod
    def _values(real: np.ndarray, dtype: np.dtype, fields: int, pad: Any) -> np.ndarray:
        real = np.tile(real, (1, fields))
        if dtype == np.bool_:
            return real
        top = np.iinfo(dtype).max
        return (np.where(real, top, 0) if pad is None else np.where(real, 0, pad)).astype(dtype)


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
    return index.padded([content], pad_value, dtype), index.mask, index.cut
