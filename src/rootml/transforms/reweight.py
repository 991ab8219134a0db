"""Kinematic reweighting: per-class histograms of chosen variables (e.g. jet pT and mass, 1D or
N-D), fitted in the Specs pass and kept in the Specs, and the event weights they give.

Each class's weighted distribution in `variables` is made equal to one target shape: "flat" (the
same weighted count in every bin) or "reference" (the distribution of the `reference` class).
For an entry of class c in bin b,

    w = (T[b] / sum T) / (H_c[b] / sum H_c)        clipped to at most `max_weight`

where H_c is class c's histogram (event weights included) and T the target (all ones for "flat",
H_reference for "reference"), so each class keeps its total weight when nothing is clipped.
Values below the first edge count in the first bin, above the last edge (and NaN) in the last
bin: no entry is dropped. A class with no entry in a bin where the target has some cannot be
matched there (that part of the target is missing from it); an entry in a bin where the target
is empty gets weight 0. Histograms of parts add up exactly (merge), so the fit does not depend
on how the files are split among threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rootml.errors import ConfigError

METHODS = ("flat", "reference")
DEFAULT_MAX_WEIGHT = 10.0


@dataclass
class Reweighting:
    """variables: names of one-number-per-entry branches or aliases; edges: the bin edges of
    each (increasing, at least two); hist: class label -> weighted counts, shape (bins of each
    variable); method, reference, max_weight: see the module docstring."""

    variables: list[str]
    edges: list[list[float]]
    method: str = "flat"
    reference: int | None = None
    max_weight: float = DEFAULT_MAX_WEIGHT
    hist: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.variables = [str(v) for v in self.variables]
        self.edges = [[float(e) for e in edges] for edges in self.edges]
        if len(self.edges) != len(self.variables) or not self.variables:
            raise ConfigError("reweight_vars needs bin edges for each variable")
        for name, edges in zip(self.variables, self.edges):
            if len(edges) < 2 or not np.all(np.diff(edges) > 0) or not np.isfinite(edges).all():
                raise ConfigError(
                    f"reweight_vars[{name!r}]: bin edges must be at least two increasing "
                    f"finite numbers, not {edges!r}"
                )
        if self.method not in METHODS:
            raise ConfigError(f"reweight_method must be one of {METHODS}, not {self.method!r}")
        if self.method == "reference" and self.reference is None:
            raise ConfigError('reweight_method "reference" needs reweight_reference (a class)')
        if not self.max_weight > 0:
            raise ConfigError(f"reweight_max must be > 0, not {self.max_weight!r}")
        self.hist = {int(k): np.asarray(v, dtype=np.float64) for k, v in self.hist.items()}

    @classmethod
    def from_params(
        cls, variables: Mapping[str, Sequence[float]], method: str, reference: Any, maximum: float
    ) -> Reweighting:
        """An unfitted Reweighting from params.json's reweight_* keys."""
        if not isinstance(variables, Mapping) or not variables:
            raise ConfigError(
                f'reweight_vars must map variables to bin edges, e.g. {{"HT": [0, 200, 400]}}, '
                f"not {variables!r}"
            )
        return cls(list(variables), [list(e) for e in variables.values()], method,
                   None if reference is None else int(reference), float(maximum))  # fmt: skip

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(e) - 1 for e in self.edges)

    def empty_copy(self) -> Reweighting:
        return Reweighting(self.variables, self.edges, self.method, self.reference,
                           self.max_weight)  # fmt: skip

    def bins(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The flat bin index of each entry of `columns` (variable -> one number per entry)."""
        index = []
        for name, edges in zip(self.variables, self.edges):
            values = np.asarray(columns[name], dtype=np.float64).reshape(-1)
            inner = np.asarray(edges[1:-1])
            # NaN sorts after everything: the last bin, as values above the last edge.
            index.append(np.searchsorted(inner, values, side="right"))
        return np.ravel_multi_index(index, self.shape)

    def update(self, columns: Mapping[str, Any], labels: np.ndarray, weights: np.ndarray) -> None:
        """Add one chunk: its entries' bins, classes and event weights."""
        flat = self.bins(columns)
        labels = np.asarray(labels, dtype=np.int64)
        size = int(np.prod(self.shape))
        for label in np.unique(labels):
            pick = labels == label
            counts = np.bincount(flat[pick], weights=np.asarray(weights)[pick], minlength=size)
            current = self.hist.setdefault(int(label), np.zeros(self.shape))
            current += counts.reshape(self.shape)

    def merge(self, other: Reweighting) -> Reweighting:
        for label, counts in other.hist.items():
            self.hist.setdefault(label, np.zeros(self.shape))
            self.hist[label] = self.hist[label] + counts
        return self

    def table(self) -> dict[int, np.ndarray]:
        """Class label -> weight per bin (flat bin index), clipped to max_weight."""
        if self.method == "reference":
            if self.reference not in self.hist:
                raise ConfigError(
                    f"reweight_reference {self.reference} is no class of the training entries "
                    f"(classes {sorted(self.hist)})"
                )
            target = self.hist[self.reference].reshape(-1)
        else:
            target = np.ones(int(np.prod(self.shape)))
        target = target / target.sum() if target.sum() > 0 else target
        tables = {}
        for label, counts in self.hist.items():
            counts = counts.reshape(-1)
            total = counts.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(counts > 0, target * total / counts, 0.0)
            tables[label] = np.minimum(ratio, self.max_weight)
        return tables

    def weights(self, columns: Mapping[str, Any], labels: np.ndarray) -> np.ndarray:
        """The reweighting factor (float32) of each entry; 1 for a class the fit never saw."""
        flat = self.bins(columns)
        labels = np.asarray(labels, dtype=np.int64)
        factor = np.ones(len(flat), dtype=np.float64)
        for label, table in self.table().items():
            pick = labels == label
            factor[pick] = table[flat[pick]]
        return factor.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variables": self.variables,
            "edges": self.edges,
            "method": self.method,
            "reference": self.reference,
            "max_weight": self.max_weight,
            "hist": {str(k): v.tolist() for k, v in sorted(self.hist.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reweighting:
        return cls(
            list(data["variables"]),
            list(data["edges"]),
            data.get("method", "flat"),
            data.get("reference"),
            float(data.get("max_weight", DEFAULT_MAX_WEIGHT)),
            {int(k): np.asarray(v) for k, v in (data.get("hist") or {}).items()},
        )
