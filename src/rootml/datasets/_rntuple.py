"""An RNTuple as a ColumnTable: its fields read by uproot, field by field.

Fields of a collection of records are branches named as uproot names them ("Jet.pt"), read as
jagged arrays of the collection "Jet". ROOT's importer keeps a TTree's leaf-count arrays twice:
as projected fields ("Muon_pt", "nMuon") and as an internal collection of records
("_collection0", fields "_collection0.Muon_pt", ...); the internal one is hidden, so neither the
default selection nor any warning shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import awkward as ak

from rootml.datasets._columns import ColumnTable
from rootml.datasets._schema import BranchInfo, describe_form


class RNTupleTable(ColumnTable):
    kind = "RNTuple"

    def __init__(self, ntuple: Any, name: str, url: str):
        self.ntuple, self.name, self.url = ntuple, name, url
        self.num_entries = int(ntuple.num_entries)
        self._described: dict[str, BranchInfo] | None = None

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

    def read_fields(self, names: Sequence[str], start: int, stop: int) -> dict[str, Any]:
        return {n: self.ntuple[n].array(entry_start=start, entry_stop=stop) for n in names}


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
