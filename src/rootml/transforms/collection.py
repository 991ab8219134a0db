"""Chunk -> collection layout: per collection a (n, C, N) tensor and a (n, N) mask (ParticleNet
style), plus the non-jagged branches as the flat (n, F0) features and mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rootml.errors import ConfigError
from rootml.transforms.layout import FlatLayout, make_columns
from rootml.transforms.pad import PadIndex, jagged_offsets

# Keys of a batch that a collection may not take.
_RESERVED = {"features", "mask", "label", "weight", "file", "entry", "ids", "stats"}


def collection_name(branch: str) -> str:
    """The collection a jagged branch belongs to by name: its prefix before the first ":" or "."
    (ATLAS PHYSLITE: "AnalysisJetsAuxDyn:pt" -> "AnalysisJetsAuxDyn"), else before the first "_"
    (NanoAOD: "Jet_pt" -> "Jet"); a name without any of them is its own collection."""
    for separator in (":", ".", "_"):
        if separator in branch:
            return branch.split(separator, 1)[0]
    return branch


class CollectionLayout:
    """Turn a chunk (branch -> array of n entries) into the collection layout.

    Returns {"features": (n, F0) float32, "mask": (n, F0) bool} for the flat and fixed-size
    branches (in `feature_names` order), and per collection K: K (n, C, N) float32 holding its C
    jagged branches (in `collections[K]` order) padded or truncated to N items, `pad_value`
    after the last real item, and f"{K}_mask" (n, N) bool, True at a real item. "stats":
    {"truncated": {branch: items cut}}.

    specs: a Specs with pad lengths resolved. collections: name -> branches; by default the jagged
    branches grouped by `collection_name` (so "Jet_Px", "Jet_E" and an alias "Jet_pt" form
    "Jet"). N is the largest pad length among a collection's branches. Branches of one collection
    must have the same number of items in every entry: otherwise the call raises ValueError
    naming them. `name` ("collection") is how training, export and rootml.json call this layout.
    """

    name = "collection"

    def __init__(
        self,
        specs: Any,
        pad_value: float = 0.0,
        collections: Mapping[str, Sequence[str]] | None = None,
    ):
        self.pad_value = float(pad_value)
        jagged = [name for name, spec in specs.branches.items() if spec.kind == "jagged"]
        if collections is None:
            groups: dict[str, list[str]] = {}
            for name in jagged:
                groups.setdefault(collection_name(name), []).append(name)
        else:
            groups = {key: list(names) for key, names in collections.items()}
            grouped = [name for names in groups.values() for name in names]
            wrong = sorted(set(grouped) - set(jagged)) or sorted(set(jagged) - set(grouped))
            if wrong or len(grouped) != len(set(grouped)):
                raise ConfigError(
                    "collections must hold every jagged branch exactly once; "
                    f"check {wrong or sorted(grouped)}"
                )
        masks = {f"{key}_mask" for key in groups}
        clash = sorted((set(groups) | masks) & _RESERVED) + sorted(set(groups) & masks)
        if clash:
            raise ConfigError(f"collection names {clash} clash with batch keys; pass collections=")
        self.collections = groups
        self.lengths = {key: max(specs.pad[b] for b in names) for key, names in groups.items()}
        self.flat = FlatLayout(
            make_columns(
                (name, spec.kind, spec.width)
                for name, spec in specs.branches.items()
                if spec.kind != "jagged"
            ),
            self.pad_value,
        )
        self.feature_names = self.flat.feature_names

    def parts(self) -> list[tuple[str, str, list[str]]]:
        """(array key, mask key, branch of each index along axis 1) of every array produced."""
        return [
            ("features", "mask", _column_branches(self.flat)),
            *((key, f"{key}_mask", list(names)) for key, names in self.collections.items()),
        ]

    def __call__(self, chunk: Mapping[str, Any]) -> dict[str, Any]:
        block = self.flat(chunk)
        truncated = block["stats"]["truncated"]
        for key, names in self.collections.items():
            values, mask, cut = self._collection(chunk, names, self.lengths[key])
            block[key], block[f"{key}_mask"] = values, mask
            truncated.update({name: cut for name in names if cut})
        return block

    def _collection(
        self, chunk: Mapping[str, Any], names: Sequence[str], length: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        offsets, _ = jagged_offsets(chunk[names[0]])
        n = len(offsets) - 1
        index = PadIndex(offsets, length)
        contents = []
        for name in names:
            branch_offsets, content = jagged_offsets(chunk[name])
            if not index.matches(branch_offsets, length):
                raise ValueError(
                    f"branches {names[0]!r} and {name!r} of one collection have different "
                    "numbers of items per entry; pass collections= to group them otherwise"
                )
            contents.append(content)
        # (n, C * N), branch c in columns c * N .. (c + 1) * N: the (n, C, N) array.
        values = index.padded(contents, self.pad_value).reshape(n, len(names), length)
        return values, index.mask, index.cut

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {len(v)}x{self.lengths[k]}" for k, v in self.collections.items())
        return f"CollectionLayout({len(self.feature_names)} flat features, {{{inner}}})"


def layout_parts(layout: Any) -> list[tuple[str, str, list[str]]]:
    """(array key, mask key, branch of each index along axis 1) of the arrays a FlatLayout or
    CollectionLayout produces: ("features", "mask", [branch per column]) for the flat layout."""
    if layout.name == "flat":
        return [("features", "mask", _column_branches(layout))]
    return layout.parts()


def _column_branches(layout: FlatLayout) -> list[str]:
    return [column.branch for column in layout.columns for _ in range(column.width)]
