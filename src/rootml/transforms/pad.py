"""Jagged -> padded: the first `max_len` items of each entry, `pad_value` after, and a mask."""

from __future__ import annotations

import awkward as ak
import numpy as np


def jagged_parts(array: ak.Array | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts (n,) int64, content (total,)) of a one-level jagged array of numbers, zero-copy
    where awkward allows."""
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
    return np.diff(offsets).astype(np.int64, copy=False), content


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
    counts, content = jagged_parts(array)
    n = len(counts)
    kept = np.minimum(counts, max_len)
    mask = np.arange(max_len) < kept[:, None]
    starts = np.cumsum(counts) - counts
    values = np.full((n, max_len), pad_value, dtype=dtype)
    values[mask] = content[(starts[:, None] + np.arange(max_len))[mask]]
    return values, mask, int(counts.sum() - kept.sum())
