"""Everything that changes values: pure functions of a chunk plus the fitted `Specs`."""

from rootml.transforms.compose import Compose, to_torch
from rootml.transforms.layout import Column, FlatLayout, make_columns
from rootml.transforms.pad import jagged_parts, pad_jagged
from rootml.transforms.specs import BranchSpec, Specs

__all__ = [
    "BranchSpec",
    "Column",
    "Compose",
    "FlatLayout",
    "Specs",
    "jagged_parts",
    "make_columns",
    "pad_jagged",
    "to_torch",
]
