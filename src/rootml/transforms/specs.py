"""Specs: the one fitted object — per-branch statistics, multiplicities, pad lengths, feature order.

Saved as JSON next to every checkpoint and exported model, so training, export and serving never
disagree on feature order or scaling. Partial Specs (per file, per chunk) merge exactly: counts,
sums of squared deviations (Chan et al.), min/max and multiplicity histograms all add up.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rootml._jsonsafe import finite_json
from rootml.errors import ConfigError, SchemaError, SpecsMismatch, closest
from rootml.transforms.collection import collection_name
from rootml.transforms.layout import Column, make_columns
from rootml.transforms.pad import jagged_parts
from rootml.transforms.reweight import Reweighting

FORMAT = 1


@dataclass
class BranchSpec:
    """Statistics of one branch over real values (padding never counted; NaN/inf counted apart).

    multiplicity: for jagged branches, histogram of items per entry (index = number of items).
    """

    kind: str
    width: int = 1
    collection: str | None = None
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    nonfinite: int = 0
    multiplicity: list[int] = field(default_factory=list)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    def update(self, values: Any) -> None:
        """Add one chunk of this branch (numpy or awkward, n entries)."""
        if self.kind == "jagged":
            counts, flat = jagged_parts(values)
            self.add_multiplicity(np.bincount(counts))
        else:
            flat = np.asarray(values).reshape(-1)
        flat = np.asarray(flat, dtype=np.float64)
        finite = np.isfinite(flat)
        self.nonfinite += int(flat.size - finite.sum())
        flat = flat[finite] if self.nonfinite else flat
        if flat.size:
            self._merge_moments(
                flat.size, float(flat.mean()), float(((flat - flat.mean()) ** 2).sum())
            )
            self.min = min(self.min, float(flat.min()))
            self.max = max(self.max, float(flat.max()))

    def merge(self, other: BranchSpec) -> None:
        self._merge_moments(other.count, other.mean, other.m2)
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.nonfinite += other.nonfinite
        self.add_multiplicity(other.multiplicity)

    def _merge_moments(self, count: int, mean: float, m2: float) -> None:
        if not count:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta**2 * self.count * count / total
        self.count = total

    def add_multiplicity(self, histogram: Any) -> None:
        histogram = np.asarray(histogram, dtype=np.int64)
        if not histogram.size:
            return
        merged = np.zeros(max(len(self.multiplicity), len(histogram)), dtype=np.int64)
        merged[: len(self.multiplicity)] += np.asarray(self.multiplicity, dtype=np.int64)
        merged[: len(histogram)] += histogram
        self.multiplicity = merged.tolist()

    def multiplicity_quantile(self, q: float) -> int:
        """Smallest multiplicity m with at least a fraction q of entries having <= m items (exact)."""
        histogram = np.asarray(self.multiplicity)
        if not histogram.sum():
            return 0
        cdf = np.cumsum(histogram) / histogram.sum()
        return int(np.searchsorted(cdf, q - 1e-12))


@dataclass
class Specs:
    """Per-branch statistics, pad lengths and feature order, plus what they were fitted on.

    branches: branch -> BranchSpec, in feature order.
    pad: jagged branch -> pad length (number of feature columns).
    fingerprint: files, tree, branches, cut and aliases the statistics come from.
    reweight: the kinematic reweighting histograms per class (rootml.transforms.reweight), when
    fitted; updated by the fitting pass with labels and weights, not by `update`.
    """

    branches: dict[str, BranchSpec] = field(default_factory=dict)
    pad: dict[str, int] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    entries: int = 0
    reweight: Reweighting | None = None

    @classmethod
    def empty(cls, kinds: Mapping[str, tuple[str, int, str | None]], fingerprint: dict) -> Specs:
        """Specs with no statistics yet for branches given as name -> (kind, width, collection)."""
        branches = {
            name: BranchSpec(kind, width, collection)
            for name, (kind, width, collection) in kinds.items()
        }
        return cls(branches=branches, fingerprint=dict(fingerprint))

    def update(self, chunk: Mapping[str, Any]) -> None:
        """Add the statistics of one chunk (branch -> array of n entries)."""
        for name, spec in self.branches.items():
            spec.update(chunk[name])
        if self.branches:
            self.entries += len(chunk[next(iter(self.branches))])

    def merge(self, other: Specs) -> Specs:
        """Add another part (same branches) into this one; returns self."""
        if list(other.branches) != list(self.branches):
            raise SpecsMismatch(
                "cannot merge Specs of different branches: "
                f"{sorted(set(self.branches) ^ set(other.branches))}"
            )
        for name, spec in self.branches.items():
            spec.merge(other.branches[name])
        self.entries += other.entries
        if other.reweight is not None:
            mine = self.reweight if self.reweight is not None else other.reweight.empty_copy()
            self.reweight = mine.merge(other.reweight)
        return self

    def resolve_pad(
        self, max_len: int | float | Mapping[str, int | float] | None = None
    ) -> dict[str, int]:
        """Set and return the pad length of each jagged branch.

        `max_len`: None (the largest multiplicity seen), an int (fixed length), a float in (0, 1)
        (that quantile of the multiplicity), or a dict keyed by branch, collection (e.g. "nJet")
        or prefix (e.g. "Jet") with such values (see `regularize_max_len`). Raises SchemaError
        for a dict key that names no jagged branch or collection.
        """
        max_len = regularize_max_len(max_len)
        check_pad_keys(
            max_len, {n: s.collection for n, s in self.branches.items() if s.kind == "jagged"}
        )
        for name, spec in self.branches.items():
            if spec.kind != "jagged":
                continue
            policy = _lookup(max_len, name, spec.collection)
            if policy is None:
                length = len(spec.multiplicity) - 1
            elif isinstance(policy, float) and 0 < policy < 1:
                length = spec.multiplicity_quantile(policy)
            else:
                length = int(policy)
            self.pad[name] = max(length, 1)  # an empty collection still gets one column
        return dict(self.pad)

    def columns(self) -> list[Column]:
        """Feature columns in order: flat branches 1 wide, fixed arrays their size, jagged `pad`."""
        return make_columns(
            (name, spec.kind, self.pad[name] if spec.kind == "jagged" else spec.width)
            for name, spec in self.branches.items()
        )

    @property
    def feature_names(self) -> list[str]:
        return [name for column in self.columns() for name in column.names()]

    def column_stats(self) -> dict[str, np.ndarray]:
        """Per feature column (F,) float64 arrays: mean, std, min, max (a branch's values shared by
        all its columns)."""
        stats = {key: [] for key in ("mean", "std", "min", "max")}
        for column in self.columns():
            spec = self.branches[column.branch]
            for key, value in (
                ("mean", spec.mean),
                ("std", spec.std),
                ("min", spec.min),
                ("max", spec.max),
            ):
                stats[key] += [value] * column.width
        return {key: np.asarray(values, dtype=np.float64) for key, values in stats.items()}

    def check(self, fingerprint: Mapping[str, Any]) -> None:
        """Raise SpecsMismatch naming the differences when `fingerprint` is not this Specs' one."""
        diffs = [
            f"{key}: fitted on {self.fingerprint.get(key)!r}, used with {fingerprint.get(key)!r}"
            for key in sorted(set(self.fingerprint) | set(fingerprint))
            if self.fingerprint.get(key) != fingerprint.get(key)
        ]
        if diffs:
            raise SpecsMismatch(
                "Specs were fitted on other inputs (pass reuse_specs=True to use "
                "them anyway): " + "; ".join(diffs)
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "entries": self.entries,
            "fingerprint": self.fingerprint,
            "pad": self.pad,
            "feature_names": self.feature_names
            if all(s.kind != "jagged" or n in self.pad for n, s in self.branches.items())
            else None,
            # JSON has no inf: an empty branch keeps min/max as null.
            "branches": {name: finite_json(asdict(spec)) for name, spec in self.branches.items()},
            **({"reweight": self.reweight.to_dict()} if self.reweight is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Specs:
        if data.get("format") != FORMAT:
            raise SpecsMismatch(f"unknown Specs format {data.get('format')!r} (expected {FORMAT})")
        branches = {name: BranchSpec(**_from_json(spec)) for name, spec in data["branches"].items()}
        return cls(
            branches,
            dict(data.get("pad", {})),
            dict(data.get("fingerprint", {})),
            int(data.get("entries", 0)),
            Reweighting.from_dict(data["reweight"]) if data.get("reweight") else None,
        )

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as out:
            json.dump(self.to_dict(), out, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Specs:
        with open(path) as source:
            return cls.from_dict(json.load(source))


def regularize_max_len(max_len: Any) -> int | float | dict[str, int | float | None] | None:
    """`max_len` checked: None, an int >= 1 (a pad length), a float in (0, 1) (a quantile of the
    multiplicity), or a dict of such values (None: the largest multiplicity) keyed by branch,
    collection or prefix. Raises ConfigError naming the value otherwise (0, -3, 1.5, NaN, True)."""
    if max_len is None:
        return None
    if isinstance(max_len, Mapping):
        return {
            str(key): None if value is None else _pad_policy(f"max_len[{key!r}]", value)
            for key, value in max_len.items()
        }
    return _pad_policy("max_len", max_len)


def _pad_policy(name: str, value: Any) -> int | float:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise ConfigError(
        f"{name} must be a pad length (an int >= 1) or a quantile in (0, 1), not {value!r}"
    )


def pad_keys(branch: str, collection: str | None) -> list[str]:
    """The keys of a max_len dict that name a jagged branch: itself, its collection (counter)
    and its prefix (rootml.transforms.collection_name), in that order of precedence."""
    return [k for k in dict.fromkeys((branch, collection, collection_name(branch))) if k]


def check_pad_keys(max_len: Any, jagged: Mapping[str, str | None]) -> None:
    """Raise SchemaError for a key of a max_len dict that names none of the `jagged` branches
    (name -> collection) by `pad_keys`, with the closest names: a key that matches nothing would
    otherwise be ignored and leave that collection at its default length."""
    if not isinstance(max_len, Mapping):
        return
    known = {key for name, collection in jagged.items() for key in pad_keys(name, collection)}
    for key in max_len:
        if key not in known:
            raise SchemaError(
                f"max_len key {key!r} names no jagged branch or collection; "
                f"closest: {closest(key, known)}; jagged branches: {_some(jagged)}"
            )


def _some(names: Iterable[str], n: int = 12) -> str:
    names = sorted(names)
    return str(names[:n])[:-1] + (f", ... {len(names) - n} more]" if len(names) > n else "]")


def _lookup(policy: Any, branch: str, collection: str | None) -> Any:
    if not isinstance(policy, Mapping):
        return policy
    for key in pad_keys(branch, collection):
        if key in policy:
            return policy[key]
    return None


def _from_json(spec: dict) -> dict:
    spec = dict(spec)
    spec["min"] = float("inf") if spec.get("min") is None else spec["min"]
    spec["max"] = float("-inf") if spec.get("max") is None else spec["max"]
    return spec
