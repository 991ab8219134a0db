"""The value pipeline: what training applied to a chunk of branches before the model, built in
one place for the dataset (training, prediction), the server (raw physics columns) and export.

    chunk (branch -> array) -> SortBy -> layout (padding, mask) -> NonFinite -> Normalize -> block
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rootml.errors import ConfigError
from rootml.transforms.collection import CollectionLayout
from rootml.transforms.compose import Compose
from rootml.transforms.layout import FlatLayout
from rootml.transforms.normalize import NonFinite, Normalize
from rootml.transforms.sort import SortBy

LAYOUTS = ("flat", "collection")


def make_layout(
    specs: Any,
    layout: Any = "flat",
    pad_value: float = 0.0,
    collections: Mapping[str, Sequence[str]] | None = None,
) -> FlatLayout | CollectionLayout:
    """A FlatLayout or CollectionLayout of `specs` from its name, "flat" or "collection" (a
    layout object is returned as it is). collections: the collection layout's name -> branches
    (default: jagged branches grouped by name prefix); refused with the flat layout. Raises
    ConfigError (a ValueError) for another name."""
    if not isinstance(layout, str):
        return layout
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be 'flat' or 'collection', not {layout!r}")
    if layout == "collection":
        return CollectionLayout(specs, pad_value, collections)
    if collections:
        raise ConfigError("collections= goes with layout='collection', not 'flat'")
    return FlatLayout(specs.columns(), pad_value)


class Pipeline(Compose):
    """SortBy -> layout -> NonFinite -> Normalize, as `build_pipeline` assembles it; called on a
    chunk it returns the block ("features", "mask", collections, "stats").

    Its parts stay reachable: `sort` (SortBy; `sort.keys` are branches a reader must read
    besides the features), `layout`, `nonfinite`, `normalize` (None without normalisation)."""

    def __init__(self, sort: SortBy, layout: Any, nonfinite: NonFinite, normalize: Any):
        self.sort, self.layout, self.nonfinite, self.normalize = sort, layout, nonfinite, normalize
        steps = [sort] if sort.groups else []
        super().__init__([*steps, layout, nonfinite, *([normalize] if normalize else [])])

    @property
    def feature_names(self) -> list[str]:
        return list(self.layout.feature_names)


def build_pipeline(
    specs: Any,
    layout: Any = "flat",
    *,
    pad_value: float = 0.0,
    sort_by: Mapping[str, Any] | None = None,
    nan_policy: str = "keep",
    normalize: str | None = None,
    collections: Mapping[str, Sequence[str]] | None = None,
) -> Pipeline:
    """The value pipeline of `specs`: items of the `sort_by` collections sorted (SortBy), padded
    into `layout` ("flat", "collection" or a layout object; `collections` as make_layout),
    NaN/inf handled by `nan_policy` (NonFinite), and scaled by `normalize` ("standard",
    "minmax" or None; Normalize, which needs fitted statistics). Raises ConfigError,
    SchemaError or SpecsMismatch for settings that cannot work with these Specs."""
    built = make_layout(specs, layout, pad_value, collections)
    return Pipeline(
        SortBy(sort_by, specs),
        built,
        NonFinite(built, nan_policy, pad_value),
        Normalize(specs, normalize, pad_value, built) if normalize else None,
    )
