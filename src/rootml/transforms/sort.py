"""Reorder the items of collections by a key branch before padding, so truncation keeps the
leading ones (e.g. the jets of highest pt)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np

from rootml.errors import SchemaError, closest
from rootml.transforms.collection import collection_name
from rootml.transforms.pad import jagged_offsets

SortKey = str | tuple[str, bool]


def parse_sort_key(key: SortKey) -> tuple[str, bool]:
    """(branch, ascending) from "Jet_pt" or "-Jet_pt" (descending), "+Jet_pt" (ascending), or a
    (branch, ascending) tuple."""
    if isinstance(key, tuple):
        branch, ascending = key
        return str(branch), bool(ascending)
    if key[:1] in "+-" and len(key) > 1:
        return key[1:], key[0] == "+"
    return key, False


class SortBy:
    """Sort the items of each entry of whole collections by a key branch.

    sort_by: collection -> key, e.g. {"Jet": "Jet_pt"} (descending), {"NJet": "+Jet_Px"}
    (ascending) or {"Muon": ("Muon_pt", True)}. A collection is named by the prefix of its
    branches ("Jet" for "Jet_*") or by its counter ("NJet", the collection of BranchSpec).
    specs: a Specs naming the branches, their kinds and collections.

    Every jagged branch of the collection is reordered with the same permutation (one
    ak.argsort of the key per chunk, stable: ties keep their stored order). The key branch must
    be in the chunk, but need not be a feature. Raises SchemaError for a collection with no jagged
    branch; the call raises ValueError when a branch of the collection has other item counts
    than the key.
    """

    def __init__(self, sort_by: Mapping[str, SortKey] | None, specs: Any):
        self.groups: dict[str, tuple[str, bool, list[str]]] = {}
        jagged = {n: s for n, s in specs.branches.items() if s.kind == "jagged"}
        for collection, key in (sort_by or {}).items():
            branch, ascending = parse_sort_key(key)
            members = [
                name
                for name, spec in jagged.items()
                if collection in (collection_name(name), spec.collection)
            ]
            if not members:
                known = {collection_name(n) for n in jagged} | {
                    s.collection for s in jagged.values()
                }
                raise SchemaError(
                    f"sort_by: no jagged branch in collection {collection!r}; closest: "
                    f"{closest(collection, known - {None})}; jagged branches: {sorted(jagged)}"
                )
            if branch in jagged:
                same = jagged[branch].collection
                members += [n for n, s in jagged.items() if s.collection == same]
            self.groups[collection] = (branch, ascending, list(dict.fromkeys(members)))

    @property
    def keys(self) -> list[str]:
        """The key branches: a reader must read them with the features."""
        return list(dict.fromkeys(branch for branch, _, _ in self.groups.values()))

    def __call__(self, chunk: Mapping[str, Any]) -> dict[str, Any]:
        chunk = dict(chunk)
        for branch, ascending, members in self.groups.values():
            key = chunk[branch]
            offsets, _ = jagged_offsets(key)
            _, order = jagged_offsets(ak.argsort(key, axis=1, ascending=ascending, stable=True))
            # Per-entry positions -> positions in the chunk's content: one gather per branch.
            order = order + np.repeat(offsets[:-1], np.diff(offsets))
            for name in members:
                member_offsets, content = jagged_offsets(chunk[name])
                if not np.array_equal(member_offsets, offsets):
                    raise ValueError(
                        f"sort_by: branch {name!r} has other item counts than its key {branch!r}"
                    )
                chunk[name] = ak.Array(
                    ak.contents.ListOffsetArray(
                        ak.index.Index64(offsets), ak.contents.NumpyArray(content[order])
                    )
                )
        return chunk

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{c}: {'+' if asc else '-'}{b}" for c, (b, asc, _) in self.groups.items()
        )
        return f"SortBy({{{inner}}})"
