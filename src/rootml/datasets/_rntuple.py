"""An RNTuple as a ColumnTable: its fields read by uproot, field by field.

Fields of a collection of records are branches named as uproot names them ("Jet.pt"), read as
jagged arrays of the collection "Jet". ROOT's importer keeps a TTree's leaf-count arrays twice:
as projected fields ("Muon_pt", "nMuon") and as an internal collection of records
("_collection0", fields "_collection0.Muon_pt", ...); the internal one is hidden, so neither the
default selection nor any warning shows it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import awkward as ak

from rootml.datasets._columns import ColumnTable
from rootml.datasets._schema import BranchInfo, describe_form


class RNTupleTable(ColumnTable):
    kind = "RNTuple"
    threaded = True

    def __init__(self, ntuple: Any, name: str, url: str):
        self.ntuple, self.name, self.url = ntuple, name, url
        self.num_entries = int(ntuple.num_entries)
        self._described: dict[str, BranchInfo] | None = None
        self._pages = _Pages()

    def describe(self) -> dict[str, BranchInfo]:
        if self._described is None:
            form = self.ntuple.to_akform()[0]
            typenames = self.ntuple.typenames()
            internal = _internal(form, set(form.fields))
            kept = [(f, c) for f, c in zip(form.fields, form.contents) if f not in internal]
            form = ak.forms.RecordForm([c for _, c in kept], [f for f, _ in kept])
            self._described = describe_form(form, typenames)
        return self._described

    def boundaries(self) -> tuple[int, ...]:
        return tuple(int(c.num_first_entry) for c in self.ntuple.cluster_summaries)

    def keys(self) -> dict[str, str]:
        # The whole record collection ("Jet") may be used by an expression too.
        keys = {name: name for name in self.describe()}
        for info in self.describe().values():
            if info.collection and info.collection != info.name:
                keys.setdefault(info.collection, info.collection)
        return keys

    def read(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        columns = super().read(*args, **kwargs)
        self._pages.next_read()
        return columns

    def read_fields(self, names: Sequence[str], start: int, stop: int) -> dict[str, Any]:
        # One ntuple.arrays of the group: a read per field costs twice the CPU. A dotted name
        # ("Jet.pt") comes back inside its top field's record, and is taken out of it.
        read = self.ntuple.arrays(
            list(names), how=dict, array_cache=self._pages, entry_start=start, entry_stop=stop
        )
        return {name: _field(read, name) for name in names}


def _field(columns: Mapping[str, Any], name: str) -> Any:
    top, *path = name.split(".")
    value = columns[top]
    for part in path:
        value = value[part]
    return value


def _internal(form: Any, top: set[str]) -> set[str]:
    """Top-level fields that only repeat others: a collection of records named "_..." each of
    whose fields is also a top-level field (ROOT's importer's "_collection0")."""
    internal = set()
    for name, field in zip(form.fields, form.contents):
        content = getattr(field, "content", None)
        if (
            name.startswith("_")
            and isinstance(field, ak.forms.ListOffsetForm)
            and isinstance(content, ak.forms.RecordForm)
            and content.fields
            and set(content.fields) <= top
        ):
            internal.add(name)
    return internal


class _Pages(MutableMapping):
    """uproot's RNTuple array cache for one reader: the pages of about the last read.

    uproot 5.7's RNTuple.arrays also reads and decompresses the cluster after `entry_stop` when
    entry_stop is a cluster's first entry (its cluster search uses side="right"), which a
    cluster-aligned unit always is: without a cache every cluster is decompressed twice. Kept,
    the extra cluster is the next unit's first one when units are read in order (0 workers, no
    shuffling); the bound keeps memory at the pages of one read (two units' clusters)."""

    def __init__(self) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._bytes, self._this_read, self._limit = 0, 0, None
        self._lock = threading.Lock()  # the reader's threads share it

    def next_read(self) -> None:
        """A read is over: keep what the largest read stored (its clusters and the next)."""
        with self._lock:
            self._limit = max(self._limit or 0, self._this_read)
            self._this_read = 0
            self._evict()

    def __getitem__(self, key: Any) -> Any:
        with self._lock:
            self._data.move_to_end(key)
            return self._data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        size = int(getattr(value, "nbytes", 0))
        with self._lock:
            if key in self._data:
                self._bytes -= int(getattr(self._data.pop(key), "nbytes", 0))
            self._data[key] = value
            self._bytes += size
            self._this_read += size
            self._evict()

    def __delitem__(self, key: Any) -> None:
        with self._lock:
            self._bytes -= int(getattr(self._data.pop(key), "nbytes", 0))

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def _evict(self) -> None:
        while self._limit is not None and self._bytes > self._limit and len(self._data) > 1:
            self._bytes -= int(getattr(self._data.popitem(last=False)[1], "nbytes", 0))
