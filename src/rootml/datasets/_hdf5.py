"""An HDF5 group of fixed-shape datasets as a ColumnTable, read with h5py.

The benchmark files of jet tagging (top tagging, ParticleNet-style particle arrays) keep one
dataset per quantity, the first axis being the entry (jet/event). A group holding such datasets
is a tree (`tree="table"`; None takes the only group that holds datasets, the file's root
included), and its datasets of the same first length are branches:

- (N,) numbers: a flat branch `name`;
- (N, K) numbers: a fixed branch, the features `name[0]` .. `name[K-1]` (mask True);
- (N, K, C) numbers: a collection `name` of K items with C fields, jagged branches `name.0` ..
  `name.{C-1}` of K items each (so `max_len`, `sort_by`, Specs and `layout="collection"` treat
  it as any collection; every item is real: zero-padded particles stay values, mask True);
- (N, A, B, C, ...) numbers: a fixed branch of A*B*C... features (images);
- a compound dataset (a table of named fields): one branch per numeric field, `name.field`.

Strings and datasets of another length are left out by name. Reads are whole slices along the
first axis, and work units end on the dataset's chunk edges (its chunk shape along axis 0).
Local paths and fsspec URLs (root://, https://) alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import awkward as ak
import numpy as np

from rootml._extras import require
from rootml.datasets._columns import ColumnTable
from rootml.datasets._files import is_remote
from rootml.datasets._schema import BranchInfo
from rootml.errors import FileAccessError, SchemaError


def _open(url: str) -> tuple[Any, Any]:
    """(h5py.File, the fsspec file under it or None)."""
    require("hdf5", "reading HDF5 files", url=url)
    import h5py

    raw = None
    try:
        if is_remote(url):
            import fsspec

            raw = fsspec.open(url, "rb").open()
            return h5py.File(raw, "r"), raw
        return h5py.File(url, "r"), None
    except (OSError, TimeoutError) as err:
        if raw is not None:
            raw.close()
        if not is_remote(url):  # h5py reports a file that is not HDF5 as an OSError
            raise FileAccessError(f"not a readable HDF5 file: {err}", url=url) from err
        raise


def data_groups(url: str) -> list[str]:
    """Names of the groups of `url` that hold numeric datasets ("/" for the root), in file
    order."""
    file, raw = _open(url)
    try:
        return _data_groups(file)
    finally:
        file.close()
        if raw is not None:
            raw.close()


def _data_groups(file: Any) -> list[str]:
    import h5py

    found = []

    def visit(group: Any) -> None:
        if any(isinstance(item, h5py.Dataset) and item.ndim for item in group.values()):
            found.append(group.name)
        for item in group.values():
            if isinstance(item, h5py.Group):
                visit(item)

    visit(file)
    return found


class HDF5Table(ColumnTable):
    kind = "HDF5 group"

    def __init__(self, url: str, tree: str | None = None):
        self.url = url
        self.file, self._raw = _open(url)
        try:
            self.name = self._group_name(tree)
            self.group = self.file[self.name]
            self._branches, self._sources, self.num_entries = _scan(self.group)
        except BaseException:
            self.close()
            raise

    def _group_name(self, tree: str | None) -> str:
        groups = _data_groups(self.file)
        if tree is None:
            if len(groups) != 1:
                what = "no numeric datasets" if not groups else f"several groups {groups}"
                raise SchemaError(f"{what}; pass tree=GROUP", url=self.url)
            return groups[0]
        name = "/" + tree.strip("/")
        if name not in groups:
            raise SchemaError(
                f"no group {tree!r} holding datasets; found {groups}", url=self.url, tree=tree
            )
        return name

    def describe(self) -> dict[str, BranchInfo]:
        return dict(self._branches)

    @property
    def compression(self) -> str | None:
        for dataset, _ in self._sources.values():
            if self.group[dataset].compression:
                return str(self.group[dataset].compression)
        return None

    def sizes(self) -> dict[str, tuple[int | None, int | None]]:
        sizes = {}
        for name, (dataset, _) in self._sources.items():
            item = self.group[dataset]
            sizes.setdefault(dataset, (int(item.id.get_storage_size()), int(item.nbytes)))
            sizes[name] = sizes[dataset]
        return {n: s for n, s in sizes.items() if n in self._branches}

    def boundaries(self) -> tuple[int, ...]:
        chunked = [self.group[d].chunks for d, _ in self._sources.values()]
        rows = max((c[0] for c in chunked if c), default=0)
        return tuple(range(0, self.num_entries, rows)) if rows else ()

    def read_fields(self, names: Sequence[str], start: int, stop: int) -> dict[str, Any]:
        read: dict[str, np.ndarray] = {}
        out = {}
        for name in names:
            dataset, part = self._sources[name]
            if dataset not in read:
                read[dataset] = self.group[dataset][start:stop]
            values = read[dataset]
            if isinstance(part, str):  # a field of a compound dataset
                out[name] = np.ascontiguousarray(values[part])
            elif part is not None:  # channel `part` of an (N, K, C) collection
                n, k = values.shape[:2]
                out[name] = ak.Array(
                    ak.contents.ListOffsetArray(
                        ak.index.Index64(np.arange(0, n * k + 1, k, dtype=np.int64)),
                        ak.contents.NumpyArray(
                            np.ascontiguousarray(values[:, :, part]).reshape(-1)
                        ),
                    )
                )
            else:
                out[name] = values
        return out

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            if self._raw is not None:
                self._raw.close()


def _scan(group: Any) -> tuple[dict[str, BranchInfo], dict[str, tuple[str, Any]], int]:
    """(branches, branch -> (dataset, field/channel/None), entries) of a group's datasets."""
    import h5py

    datasets = [(n, d) for n, d in group.items() if isinstance(d, h5py.Dataset) and d.ndim]
    lengths = [d.shape[0] for _, d in datasets]
    entries = max(set(lengths), key=lengths.count)  # the length most datasets share
    branches: dict[str, BranchInfo] = {}
    sources: dict[str, tuple[str, Any]] = {}
    for name, dataset in datasets:
        typename = f"{dataset.dtype} {tuple(dataset.shape)}"
        if dataset.shape[0] != entries:
            branches[name] = BranchInfo(name, "unsupported", "", f"{typename}, not {entries} rows")
            continue
        if dataset.dtype.names:  # compound: one branch per field
            for field in dataset.dtype.names:
                sub = dataset.dtype[field]
                full = f"{name}.{field}"
                branches[full] = _array_info(full, sub.base, sub.shape, f"{sub}")
                sources[full] = (name, field)
            continue
        shape = tuple(dataset.shape[1:])
        if len(shape) == 2 and dataset.dtype.kind in "biuf":
            for channel in range(shape[1]):
                full = f"{name}.{channel}"
                branches[full] = BranchInfo(
                    full, "jagged", dataset.dtype.str, typename, collection=name
                )
                sources[full] = (name, channel)
            continue
        branches[name] = _array_info(name, dataset.dtype, shape, typename)
        sources[name] = (name, None)
    return branches, sources, entries


def _array_info(name: str, dtype: np.dtype, shape: tuple, typename: str) -> BranchInfo:
    if dtype.kind not in "biuf":
        return BranchInfo(name, "unsupported", "", typename)
    shape = (int(np.prod(shape)),) if len(shape) > 1 else tuple(shape)
    return BranchInfo(name, "fixed" if shape else "flat", dtype.str, typename, shape)
