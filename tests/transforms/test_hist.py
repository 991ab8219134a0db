"""Histograms per class against numpy.histogram; parts merge; PNGs written."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from rootml.transforms import Histograms


def test_counts_per_class_equal_numpy_and_parts_merge(tmp_path) -> None:
    rng = np.random.default_rng(5)
    n = 3000
    counts = rng.poisson(2.0, n)
    chunk = {
        "MET": rng.normal(size=n).astype(np.float32),
        "Jet_pt": ak.unflatten(rng.exponential(30.0, counts.sum()), counts),
    }
    chunk["MET"][::97] = np.nan
    classes = rng.integers(0, 2, n)
    hist = Histograms({"MET": "flat", "Jet_pt": "jagged"}, classes=[0, 1], bins=20)
    hist.set_ranges({"MET": (-1.5, 1.5), "Jet_pt": (0.0, 100.0)})
    parts = [hist.empty_copy() for _ in range(3)]
    for part, rows in zip(parts, np.array_split(np.arange(n), 3)):
        part.update({k: v[rows] for k, v in chunk.items()}, classes[rows])
    for part in parts:
        hist.merge(part)
    met = np.asarray(chunk["MET"], dtype=np.float64)
    pt = np.asarray(ak.flatten(chunk["Jet_pt"]))
    pt_class = np.repeat(classes, counts)
    for c in (0, 1):
        values = met[(classes == c) & np.isfinite(met)]
        want, _ = np.histogram(np.clip(values, -1.5, 1.5), bins=20, range=(-1.5, 1.5))
        np.testing.assert_array_equal(hist.counts["MET"][c], want)
        want, _ = np.histogram(np.clip(pt[pt_class == c], 0, 100), bins=20, range=(0, 100))
        np.testing.assert_array_equal(hist.counts["Jet_pt"][c], want)
    finite = met[np.isfinite(met)]
    assert hist.outside["MET"] == int((np.abs(finite) > 1.5).sum())
    assert hist.outside["Jet_pt"] == int((pt > 100).sum())
    paths = hist.plot(tmp_path / "out")
    assert [p.name for p in paths] == ["MET.png", "Jet_pt.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_ranges_from_a_chunk_and_merge_refuses_other_ranges() -> None:
    hist = Histograms({"a": "flat", "c": "flat"}, bins=4)
    hist.set_ranges({"a": np.array([2.0, np.nan, -1.0]), "c": np.full(3, 7.0)})
    assert hist.ranges == {"a": (-1.0, 2.0), "c": (6.5, 7.5)}
    other = Histograms({"a": "flat", "c": "flat"}, bins=4)
    other.set_ranges({"a": (0.0, 1.0), "c": (0.0, 1.0)})
    with pytest.raises(ValueError, match="ranges"):
        hist.merge(other)


@pytest.mark.parametrize("bins, high", [(50, 19), (20, 55)], ids=["narrow-bins", "wide-bins"])
def test_whole_numbers_are_drawn_per_integer(tmp_path, bins, high) -> None:
    """nJet-like values: bins narrower than 1 (picket fence) or holding 1 or 2 integers are
    drawn as spans of whole integers, heights the count per integer over the total."""
    rng = np.random.default_rng(3)
    n_jet = np.clip(rng.poisson(high / 3, 5000), 0, high)
    n_jet[:2] = [0, high]
    classes = rng.integers(0, 2, 5000)
    hist = Histograms({"nJet": "flat", "MET": "flat"}, classes=[0, 1], bins=bins)
    hist.update({"nJet": n_jet, "MET": rng.normal(size=5000)}, classes)
    assert hist.integral == {"nJet": True, "MET": False}
    edges, heights = hist.fractions("nJet")
    assert edges[0] == -0.5 and edges[-1] == high + 0.5
    assert np.all(np.diff(edges) >= 1) and np.all(edges % 1 == 0.5)
    for c in (0, 1):
        per_integer = np.bincount(n_jet[classes == c], minlength=high + 1) / (classes == c).sum()
        # Every integer k lies in one drawn span; its height is the span's mean per integer.
        span = np.searchsorted(edges, np.arange(high + 1), side="right") - 1
        widths = np.diff(edges)
        want = np.bincount(span, weights=per_integer, minlength=len(widths)) / widths
        np.testing.assert_allclose(heights[c], want, rtol=1e-12)
        assert np.sum(heights[c] * widths) == pytest.approx(1.0)
    met_edges, met_heights = hist.fractions("MET")
    np.testing.assert_array_equal(met_edges, hist.edges("MET"))  # real numbers: bins as filled
    for c in (0, 1):  # the fraction of the class's values in each bin
        np.testing.assert_allclose(met_heights[c], hist.counts["MET"][c] / (classes == c).sum())
    paths = hist.plot(tmp_path, log_y=True, progress=False)
    assert [p.name for p in paths] == ["nJet.png", "MET.png"]
