"""The collection layout: the flat layout's values rearranged, (n, C, N) + (n, N) masks."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml import RootIterableDataset
from rootml.transforms import CollectionLayout, Specs
from tests.conftest import HZZ, RNTUPLE
from tests.transforms.test_sort import PT, columns, padded, read_all


@pytest.mark.parametrize(
    ("path", "branches", "collection", "sort_by"),
    [
        (HZZ, ["NJet", "Jet_Px", "Jet_Py", "Jet_E", "MET_px", "Muon_E"], "Jet", {"Jet": "Jet_pt"}),
        (RNTUPLE, ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi"], "Muon", None),
    ],
)
def test_collection_equals_flat_rearranged(path, branches, collection, sort_by) -> None:
    common = dict(
        branches=branches, aliases=PT if sort_by else None, batch_size=512, chunk_size=400,
        max_len=3, pad_value=-1.0, sort_by=sort_by,
    )  # fmt: skip
    flat_ds = RootIterableDataset(str(path), **common)
    coll_ds = RootIterableDataset(str(path), layout="collection", **common)
    flat, coll = read_all(flat_ds), read_all(coll_ds)
    members = coll_ds.layout.collections[collection]
    assert members == [b for b in branches if b.startswith(f"{collection}_")]
    n = len(flat["features"])
    assert coll[collection].shape == (n, len(members), 3) and coll[collection].dtype == np.float32
    assert coll[f"{collection}_mask"].shape == (n, 3) and coll[f"{collection}_mask"].dtype == bool
    for c, branch in enumerate(members):
        cols = columns(flat_ds.feature_names, branch)
        np.testing.assert_array_equal(coll[collection][:, c, :], flat["features"][:, cols])
        np.testing.assert_array_equal(coll[f"{collection}_mask"], flat["mask"][:, cols])
    # Non-jagged branches: the flat "features" of the collection layout.
    singles = [b for b in branches if "[" not in b and b in flat_ds.feature_names]
    assert coll_ds.feature_names == singles
    picked = [flat_ds.feature_names.index(b) for b in singles]
    np.testing.assert_array_equal(coll["features"], flat["features"][:, picked])
    assert coll["mask"].all()
    for key in ("label", "weight", "file", "entry"):
        np.testing.assert_array_equal(coll[key], flat[key])
    assert coll_ds.report == flat_ds.report


def test_unequal_pads_in_a_collection_take_the_largest() -> None:
    branches = ["Jet_Px", "Jet_E"]
    ds = RootIterableDataset(
        str(HZZ), branches=branches, layout="collection", max_len={"Jet_Px": 1, "Jet_E": 4}
    )
    got = read_all(ds)
    arrays = uproot.open(HZZ)["events"].arrays(branches)
    assert ds.layout.lengths == {"Jet": 4}
    for c, name in enumerate(branches):
        values, mask = padded(arrays[name], 4, 0.0)
        np.testing.assert_array_equal(got["Jet"][:, c, :], values)
        np.testing.assert_array_equal(got["Jet_mask"], mask)
    assert got["features"].shape == (len(arrays), 0)


def _specs() -> Specs:
    specs = Specs.empty(
        {"HT": ("flat", 1, None), "Jet_pt": ("jagged", 1, "n"), "Jet_eta": ("jagged", 1, "n")},
        {},
    )
    specs.pad = {"Jet_pt": 2, "Jet_eta": 2}
    return specs


def test_collection_layout_on_a_chunk() -> None:
    chunk = {
        "HT": np.array([1.0, 2.0, 3.0], dtype=np.float32),
        "Jet_pt": ak.Array([[3.0, 1.0, 2.0], [], [5.0]]),
        "Jet_eta": ak.Array([[0.3, 0.1, 0.2], [], [0.5]]),
    }
    out = CollectionLayout(_specs(), pad_value=7.0)(chunk)
    np.testing.assert_array_equal(
        out["Jet"],
        np.array([[[3, 1], [0.3, 0.1]], [[7, 7], [7, 7]], [[5, 7], [0.5, 7]]], dtype=np.float32),
    )
    np.testing.assert_array_equal(out["Jet_mask"], [[True, True], [False, False], [True, False]])
    np.testing.assert_array_equal(out["features"], chunk["HT"][:, None])
    assert out["stats"]["truncated"] == {"Jet_pt": 1, "Jet_eta": 1}
    with pytest.raises(ValueError, match="Jet_eta"):
        CollectionLayout(_specs())(dict(chunk, Jet_eta=ak.Array([[0.3], [], [0.5]])))


def test_collection_names_checked() -> None:
    specs = _specs()
    with pytest.raises(ValueError, match="exactly once"):
        CollectionLayout(specs, collections={"Jet": ["Jet_pt"]})
    with pytest.raises(ValueError, match="clash"):
        CollectionLayout(specs, collections={"label": ["Jet_pt", "Jet_eta"]})
    split = CollectionLayout(specs, collections={"A": ["Jet_pt"], "B": ["Jet_eta"]})
    assert [key for key, _, _ in split.parts()] == ["features", "A", "B"]
