"""Normalisation against numpy on the same columns, its inverse, and the NaN/inf policy."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml import DataValueError, RootIterableDataset, SpecsMismatch, fit_specs
from rootml.transforms import CollectionLayout, FlatLayout, NonFinite, Normalize, Specs
from rootml.transforms.layout import make_columns
from tests.conftest import HZZ
from tests.transforms.test_sort import columns, padded, read_all

BRANCHES = ["Jet_Px", "Jet_E", "MET_px", "NJet", "triggerIsoMu24"]


def numpy_stats(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max()}


@pytest.fixture(scope="module")
def hzz():
    """The HZZ columns as uproot reads them, their Specs and the flat block of all entries."""
    arrays = uproot.open(HZZ)["events"].arrays(BRANCHES)
    specs = fit_specs(str(HZZ), branches=BRANCHES, max_len=3, chunk_size=1000)
    block = FlatLayout(specs.columns(), -5.0)({n: arrays[n] for n in BRANCHES})
    return arrays, specs, block


@pytest.mark.parametrize("method", ["standard", "minmax"])
def test_normalize_equals_numpy(hzz, method) -> None:
    arrays, specs, block = hzz
    out = Normalize(specs, method, pad_value=-5.0)(block)
    names = specs.feature_names
    for branch in BRANCHES:
        raw = arrays[branch]
        stats = numpy_stats(ak.flatten(raw) if raw.ndim > 1 else raw)
        offset, scale = (
            (stats["mean"], stats["std"])
            if method == "standard"
            else (stats["min"], stats["max"] - stats["min"])
        )
        scale = scale or 1.0
        cols = columns(names, branch) or [names.index(branch)]
        values, mask = (
            padded(raw, 3, -5.0)
            if raw.ndim > 1
            else (np.asarray(raw)[:, None], np.ones((len(raw), 1), bool))
        )
        expected = np.where(mask, (values.astype(np.float64) - offset) / scale, -5.0)
        np.testing.assert_allclose(out["features"][:, cols], expected, rtol=2e-6, atol=2e-6)
        np.testing.assert_array_equal(out["features"][:, cols][~mask], -5.0)
        np.testing.assert_array_equal(out["mask"][:, cols], mask)
    assert out["features"].dtype == np.float32
    if method == "minmax":
        real = out["features"][out["mask"]]
        assert real.min() >= 0 and real.max() <= 1 + 1e-6


def test_round_trip_and_constant_columns(hzz) -> None:
    _, specs, block = hzz
    for method in ("standard", "minmax"):
        norm = Normalize(specs, method, pad_value=-5.0)
        back = norm.inverse(norm(block))
        np.testing.assert_allclose(back["features"], block["features"], rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(back["features"][~block["mask"]], -5.0)
    constant = Specs.empty({"c": ("flat", 1, None), "x": ("flat", 1, None)}, {})
    constant.update({"c": np.full(10, 4.0), "x": np.arange(10.0)})
    constant_block = {
        "features": np.stack([np.full(10, 4.0), np.arange(10.0)], axis=1).astype(np.float32),
        "mask": np.ones((10, 2), bool),
    }
    for method in ("standard", "minmax"):
        out = Normalize(constant, method)(constant_block)["features"]
        np.testing.assert_array_equal(out[:, 0], 0.0)  # x - 4 with scale 1
        assert np.isfinite(out).all()


def test_collection_layout_normalised_per_channel(hzz) -> None:
    arrays, specs, _ = hzz
    layout = CollectionLayout(specs, pad_value=-5.0)
    block = layout({n: arrays[n] for n in BRANCHES})
    out = Normalize(specs, "standard", -5.0, layout=layout)(block)
    for c, branch in enumerate(layout.collections["Jet"]):
        spec = specs.branches[branch]
        values = block["Jet"][:, c, :].astype(np.float64)
        expected = np.where(block["Jet_mask"], (values - spec.mean) / spec.std, -5.0)
        np.testing.assert_allclose(out["Jet"][:, c, :], expected, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(out["Jet_mask"], block["Jet_mask"])


def test_normalize_needs_statistics() -> None:
    with pytest.raises(SpecsMismatch, match="statistics"):
        RootIterableDataset(str(HZZ), branches=["Jet_Px"], max_len=2, normalize="standard")
    with pytest.raises(ValueError, match="normalize"):
        Normalize(fit_specs(str(HZZ), branches=["MET_px"]), "zscore")


def test_dataset_normalize_equals_transform_of_raw_batches(hzz) -> None:
    _, specs, _ = hzz
    common = dict(branches=BRANCHES, max_len=3, pad_value=-5.0, specs=specs, batch_size=1000)
    raw = read_all(RootIterableDataset(str(HZZ), **common))
    normed = read_all(RootIterableDataset(str(HZZ), normalize="minmax", **common))
    expected = Normalize(specs, "minmax", -5.0)(raw)
    np.testing.assert_array_equal(normed["features"], expected["features"])
    np.testing.assert_array_equal(normed["mask"], raw["mask"])


def write_nonfinite(path, kind: str) -> dict[str, ak.Array]:
    """A tiny TTree or RNTuple with NaN and inf in a flat and a jagged branch (one NaN beyond
    max_len=2)."""
    nan, inf = np.nan, np.inf
    x = np.array([1.0, nan, 2.0, inf, 3.0, -inf], dtype=np.float32)
    jet_pt = ak.Array([[1.0, nan], [], [inf, 2.0, nan], [4.0], [nan], [5.0, 6.0]])
    jet_pt = ak.values_astype(jet_pt, np.float32)
    with uproot.recreate(path) as out:
        if kind == "ttree":
            jets = ak.zip({"pt": jet_pt})
            out.mktree("events", {"x": np.float32, "Jet": jets.type.content})
            out["events"].extend({"x": x, "Jet": jets})
        else:
            out["events"] = {"x": x, "Jet_pt": jet_pt}  # an RNTuple
    return uproot.open(path)["events"].arrays(["x", "Jet_pt"])


@pytest.mark.parametrize("kind", ["ttree", "rntuple"])
def test_nonfinite_counted_masked_or_refused(tmp_path, kind) -> None:
    path = tmp_path / "nonfinite.root"
    arrays = write_nonfinite(path, kind)
    kept_values, kept_mask = padded(arrays["Jet_pt"], 2, 0.0)
    expected = {
        "x": int((~np.isfinite(ak.to_numpy(arrays["x"]))).sum()),
        "Jet_pt": int((~np.isfinite(kept_values) & kept_mask).sum()),
    }
    common = dict(branches=["x", "Jet_pt"], max_len=2, batch_size=4)
    ds = RootIterableDataset(str(path), **common)
    keep = read_all(ds)
    assert {b: ds.report[f"nonfinite:{b}"] for b in expected} == expected
    x_col, jet_cols = ds.feature_names.index("x"), columns(ds.feature_names, "Jet_pt")
    np.testing.assert_array_equal(keep["features"][:, x_col], arrays["x"])  # NaN kept as read
    np.testing.assert_array_equal(keep["features"][:, jet_cols], kept_values)

    masked_ds = RootIterableDataset(str(path), nan_policy="mask", pad_value=-1.0, **common)
    masked = read_all(masked_ds)
    bad = ~np.isfinite(keep["features"]) & keep["mask"]
    np.testing.assert_array_equal(masked["mask"], keep["mask"] & ~bad)
    np.testing.assert_array_equal(masked["features"][bad], -1.0)
    good = keep["mask"] & ~bad
    np.testing.assert_array_equal(masked["features"][good], keep["features"][good])
    assert {b: masked_ds.report[f"nonfinite:{b}"] for b in expected} == expected

    with pytest.raises(DataValueError, match=r"nonfinite\.root.*'x'"):
        read_all(RootIterableDataset(str(path), nan_policy="raise", **common))
    # The statistics pass counts every item, also the NaN cut off by padding.
    specs = fit_specs(str(path), branches=["x", "Jet_pt"])
    content = np.asarray(ak.flatten(arrays["Jet_pt"]))
    assert specs.branches["Jet_pt"].nonfinite == int((~np.isfinite(content)).sum())
    assert specs.branches["Jet_pt"].count == int(np.isfinite(content).sum())


def test_nonfinite_in_collection_masks_the_item() -> None:
    specs = Specs.empty({"J_a": ("jagged", 1, "n"), "J_b": ("jagged", 1, "n")}, {})
    specs.pad = {"J_a": 2, "J_b": 2}
    layout = CollectionLayout(specs, pad_value=0.0)
    block = layout(
        {"J_a": ak.Array([[1.0, np.nan], [2.0]]), "J_b": ak.Array([[3.0, 4.0], [np.inf]])}
    )
    out = NonFinite(layout, "mask")(block)
    np.testing.assert_array_equal(out["J_mask"], [[True, False], [False, False]])
    np.testing.assert_array_equal(out["J"], [[[1.0, 0.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert out["stats"]["nonfinite"] == {"J_a": 1, "J_b": 1}
    with pytest.raises(ValueError, match="nan_policy"):
        NonFinite(layout, "drop")


def test_nonfinite_not_fooled_by_finite_values_whose_sum_overflows() -> None:
    """The quick check sums a block; finite values near float32's largest overflow that sum,
    and are still counted as finite (counted against numpy's isfinite)."""
    big = np.float32(3e38)
    chunk = {"x": np.array([big, big, big, -1.0], dtype=np.float32), "y": np.ones(4)}
    layout = FlatLayout(make_columns([("x", "flat", 1), ("y", "flat", 1)]))
    for values, want in ((chunk["x"], {}), (np.array([big, big, np.nan, 1.0]), {"x": 1})):
        block = NonFinite(layout, "keep")(layout({**chunk, "x": values.astype(np.float32)}))
        assert block["stats"]["nonfinite"] == want
        assert int((~np.isfinite(values)).sum()) == sum(want.values())
        np.testing.assert_array_equal(block["features"][:, 0], values.astype(np.float32))
