"""Everything that changes values: pure functions of a chunk plus the fitted `Specs`."""

from rootml.transforms.collection import CollectionLayout, collection_name, layout_parts
from rootml.transforms.compose import Compose, to_torch
from rootml.transforms.hist import Histograms
from rootml.transforms.layout import Column, FlatLayout, make_columns
from rootml.transforms.normalize import NonFinite, Normalize, make_layout
from rootml.transforms.pad import jagged_parts, pad_jagged
from rootml.transforms.sort import SortBy, parse_sort_key
from rootml.transforms.specs import BranchSpec, Specs

__all__ = [
    "BranchSpec",
    "CollectionLayout",
    "Column",
    "Compose",
    "FlatLayout",
    "Histograms",
    "NonFinite",
    "Normalize",
    "SortBy",
    "Specs",
    "collection_name",
    "jagged_parts",
    "layout_parts",
    "make_columns",
    "make_layout",
    "pad_jagged",
    "parse_sort_key",
    "to_torch",
]
