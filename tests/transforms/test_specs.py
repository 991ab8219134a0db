"""Specs: parts merge into the Specs of the whole; multiplicity quantiles; JSON round trip."""

from __future__ import annotations

from fractions import Fraction

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rootml.errors import SpecsMismatch
from rootml.transforms import Specs

KINDS = {"MET": ("flat", 1, None), "Jet_pt": ("jagged", 1, "nJet"), "vec": ("fixed", 3, None)}


def _chunk(counts: list[int], values: list[float], flat: list[float]) -> dict:
    n = len(counts)
    jagged = np.resize(np.asarray(values or [0.0], dtype=np.float64), sum(counts))
    return {
        "MET": np.resize(np.asarray(flat, dtype=np.float32), n),
        "Jet_pt": ak.unflatten(jagged, np.asarray(counts, dtype=np.int64)),
        "vec": np.resize(np.asarray(flat[::-1], dtype=np.float64), (n, 3)),
    }


def _slice(chunk: dict, start: int, stop: int) -> dict:
    return {name: values[start:stop] for name, values in chunk.items()}


def _assert_same(merged: Specs, whole: Specs) -> None:
    assert merged.entries == whole.entries
    for name, spec in whole.branches.items():
        other = merged.branches[name]
        assert (other.count, other.min, other.max, other.nonfinite) == (
            spec.count,
            spec.min,
            spec.max,
            spec.nonfinite,
        )
        assert other.multiplicity == spec.multiplicity
        scale = max(abs(spec.min), abs(spec.max), 1.0) if spec.count else 1.0
        assert other.mean == pytest.approx(spec.mean, rel=1e-9, abs=1e-9 * scale)
        assert other.std == pytest.approx(spec.std, rel=1e-9, abs=1e-9 * scale)


values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=60),
    jagged=st.lists(values | st.sampled_from([np.nan, np.inf, -np.inf]), max_size=80),
    flat=st.lists(values, min_size=1, max_size=20),
    cuts=st.lists(st.integers(0, 60), max_size=5),
)
def test_merge_of_parts_equals_whole(counts, jagged, flat, cuts) -> None:
    chunk = _chunk(counts, jagged, flat)
    whole = Specs.empty(KINDS, {"files": ["x"]})
    whole.update(chunk)
    edges = sorted({0, len(counts), *[min(c, len(counts)) for c in cuts]})
    merged = Specs.empty(KINDS, {"files": ["x"]})
    for start, stop in zip(edges, edges[1:]):
        part = Specs.empty(KINDS, {"files": ["x"]})
        part.update(_slice(chunk, start, stop))
        merged.merge(part)
    _assert_same(merged, whole)
    # And both against numpy on the same values.
    content = np.asarray(ak.flatten(chunk["Jet_pt"]), dtype=np.float64)
    finite = content[np.isfinite(content)]
    spec = whole.branches["Jet_pt"]
    assert spec.count == finite.size and spec.nonfinite == content.size - finite.size
    assert spec.multiplicity == np.bincount(counts).tolist()
    if finite.size:
        assert (spec.min, spec.max) == (finite.min(), finite.max())
        assert spec.mean == pytest.approx(finite.mean(), rel=1e-9, abs=1e-9 * np.abs(finite).max())
        assert spec.std == pytest.approx(finite.std(), rel=1e-9, abs=1e-9 * np.abs(finite).max())
    vec = np.asarray(chunk["vec"], dtype=np.float64)
    assert whole.branches["vec"].count == vec.size
    assert whole.branches["vec"].mean == pytest.approx(vec.mean(), rel=1e-9, abs=1e-3)


def test_merge_refuses_other_branches() -> None:
    a = Specs.empty(KINDS, {})
    b = Specs.empty({"MET": ("flat", 1, None)}, {})
    with pytest.raises(SpecsMismatch, match="Jet_pt"):
        a.merge(b)


def test_multiplicity_quantile_is_the_inverted_cdf() -> None:
    """Definition: the smallest m with at least a fraction q of the entries holding <= m items,
    i.e. numpy.quantile(counts, q, method="inverted_cdf")."""
    rng = np.random.default_rng(3)
    for n, mean in [(1, 2.0), (7, 1.0), (1000, 3.5), (5000, 0.2)]:
        counts = rng.poisson(mean, n)
        specs = Specs.empty({"x": ("jagged", 1, None)}, {})
        specs.update({"x": ak.unflatten(np.zeros(counts.sum()), counts)})
        spec = specs.branches["x"]
        for q in [*rng.random(50), 0.5, 0.9, 0.99, 1.0]:
            assert spec.multiplicity_quantile(q) == int(
                np.quantile(counts, q, method="inverted_cdf")
            ), (n, q)
        # At exact ties (q * n an integer) the definition holds with exact arithmetic.
        ordered = np.sort(counts)
        for k in range(1, min(n, 40) + 1):
            q = k / n
            exact = ordered[int(np.ceil(Fraction(k, n) * n)) - 1]
            assert spec.multiplicity_quantile(q) == exact


def test_resolve_pad_policies_and_json_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(4)
    counts = rng.poisson(3.0, 2000)
    kinds = {"Jet_pt": ("jagged", 1, "nJet"), "Jet_eta": ("jagged", 1, "nJet")}
    kinds["Mu_pt"] = ("jagged", 1, "nMu")
    chunk = {name: ak.unflatten(rng.normal(size=counts.sum()), counts) for name in kinds}
    specs = Specs.empty(kinds, {"files": ["a.root"], "cut": None})
    specs.update(chunk)
    assert specs.resolve_pad(None)["Jet_pt"] == counts.max()
    assert specs.resolve_pad(4) == dict.fromkeys(kinds, 4)
    pads = specs.resolve_pad({"Jet": 0.9, "nMu": 2, "Jet_eta": 7})
    assert pads == {
        "Jet_pt": int(np.quantile(counts, 0.9, method="inverted_cdf")),
        "Jet_eta": 7,
        "Mu_pt": 2,
    }
    path = tmp_path / "specs.json"
    specs.save(path)
    loaded = Specs.load(path)
    assert loaded.to_dict() == specs.to_dict()
    assert loaded.feature_names == specs.feature_names
