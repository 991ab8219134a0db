"""Writers of `rootml predict`: entry-aligned friend trees or RNTuples (uproot) and parquet
(awkward).

Both take chunks (file index, first entry, branch -> scores) arriving in (file, entry) order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from rootml.protocol import DTYPES

Chunk = tuple[int, int, dict[str, np.ndarray]]


def _branch_types(names: Mapping[str, str], outputs: Sequence[Any]) -> dict[str, Any]:
    """Branch -> uproot type (dtype, or (dtype, shape) for a fixed-size array) from the model's
    outputs (TensorSpecs); used where no score was seen (no entries)."""
    types = {}
    for spec in outputs:
        dims = tuple(spec.shape[1:])
        dtype = DTYPES[spec.datatype]
        flat = dims in ((), (1,)) or any(d < 0 for d in dims)
        types[names[spec.name]] = dtype if flat else (dtype, dims)
    return types


def _types_of(scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {k: v.dtype if v.ndim == 1 else (v.dtype, v.shape[1:]) for k, v in scores.items()}


def empty_scores(names: Mapping[str, str], outputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """Branch -> scores of no entries, in the types of the model's outputs (TensorSpecs)."""
    empty = {}
    for name, kind in _branch_types(names, outputs).items():
        dtype, dims = kind if isinstance(kind, tuple) else (kind, ())
        empty[name] = np.zeros((0, *dims), dtype=dtype)
    return empty


class FriendTrees:
    """One ROOT file per input (`paths[i]` for input i) holding TTree `tree` (an RNTuple with
    `rntuple=True`), one branch (field) per score. Files are written one at a time, in input
    order; each `write` appends one basket per branch (one cluster of the RNTuple). Inputs
    without entries get an empty tree at `close`."""

    def __init__(
        self,
        paths: Sequence[Path],
        tree: str,
        names: Mapping[str, str],
        outputs: Sequence[Any],
        rntuple: bool = False,
    ):
        self.paths, self.tree, self.rntuple = list(paths), tree, rntuple
        self.types = _branch_types(names, outputs)
        self._file: Any = None
        self._current: int | None = None
        self._done: set[int] = set()

    def write(self, file: int, start: int, scores: dict[str, np.ndarray]) -> None:
        import uproot

        if file != self._current:
            self._close_current()
            self._file = uproot.recreate(self.paths[file])
            self.types = _types_of(scores)
            self._tree = self._make(self._file)
            self._current = file
            self._done.add(file)
        self._tree.extend(scores)

    def close(self) -> None:
        import uproot

        self._close_current()
        for index, path in enumerate(self.paths):
            if index not in self._done:
                with uproot.recreate(path) as out:
                    self._make(out)

    def _make(self, file: Any) -> Any:
        if not self.rntuple:
            return file.mktree(self.tree, self.types)
        # uproot's RNTuple writer takes a fixed-size array as a dtype with a shape
        return file.mkrntuple(self.tree, {k: np.dtype(t) for k, t in self.types.items()})

    def abort(self) -> None:
        self._close_current()

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._current = None, None


def write_parquet(
    path: Path,
    chunks: Iterator[Chunk],
    urls: Sequence[str],
    names: Mapping[str, str],
    outputs: Sequence[Any],
) -> None:
    """Columns "file" (string), "entry" (int64) and the scores, one row group per chunk."""

    def records(chunk: Chunk) -> ak.Array:
        file, start, scores = chunk
        rows = len(next(iter(scores.values())))
        return ak.Array(
            {
                "file": np.full(rows, urls[file]),
                "entry": np.arange(start, start + rows, dtype=np.int64),
                **scores,
            }
        )

    chunks = iter(chunks)
    first = next(chunks, None)
    if first is not None:
        ak.to_parquet_row_groups(map(records, itertools.chain([first], chunks)), path)
        return
    empty = empty_scores(names, outputs)
    ak.to_parquet(
        ak.Array({"file": np.array([], dtype=str), "entry": np.zeros(0, np.int64), **empty}), path
    )
